"""``lfm-bench``: list, run and report the paper's experiments."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lfm_core.errors import DataNotFoundError, GracefulStop, LFMError, UsageError, os_error_line
from lfm_core.experiments import PROFILE_NAMES, check_profile, get_experiment, parse_set, selected
from lfm_core.launch import LAUNCH_OPTIONS
from lfm_core.plan import PLAN_OPTIONS, maybe_plan, take_plan_options
from lfm_core.registries import ALL, EXPERIMENTS
from lfm_core.stopping import stop_if_requested

# timm's import triggers torch's deprecation warning for torch.jit.script; it is not ours to fix
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
console = Console(stderr=True)
out = Console()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lfm-core")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """Reproduce the tables and figures of "Learning From Mistakes" (Zhang et al., IEEE TAI 2025).

    \b
    lfm-bench list                      experiments (and other registries) installed
    lfm-bench run table7 --noise flip   run one experiment (default profile: cpu)
    lfm-bench report                    rebuild every table and figure from the results
    """


@cli.command("list")
@click.argument("pattern", default="*")
@click.option("--registry", "-r", type=click.Choice(sorted(ALL)), default="experiments", show_default=True,
              help="Which registry to list.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (experiments: name, kind, title, package).")
def list_cmd(pattern: str, registry: str, as_json: bool) -> None:
    """List installed experiments (or another registry's names) matching a glob PATTERN."""
    reg = ALL[registry]
    names = reg.list(pattern)
    if as_json:
        click.echo(json.dumps(names if registry != "experiments" else [_experiment_entry(n) for n in names], indent=2))
        return
    if registry != "experiments":
        for name in names:
            out.print(name)
        return
    from rich.table import Table

    table = Table("name", "kind", "title", "package", box=None)
    for name in names:
        try:
            exp = get_experiment(name)
            table.add_row(name, exp.kind, exp.title, exp.package)
        except Exception as exc:  # a broken plug-in must not hide the others
            table.add_row(name, "?", f"[red]failed to load: {exc}", "")
    out.print(table)


def _experiment_entry(name: str) -> dict[str, str]:
    try:
        exp = get_experiment(name)
        return {"name": name, "kind": exp.kind, "title": exp.title, "package": exp.package}
    except Exception as exc:  # a broken plug-in must not hide the others
        return {"name": name, "error": f"failed to load: {exc}"}


def _complete_experiment(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    return [n for n in EXPERIMENTS.names() if n.startswith(incomplete)]


COMMON_OPTIONS = [
    click.Option(["--profile"], type=click.Choice(PROFILE_NAMES), default="cpu", show_default=True,
                 help="smoke: seconds, for CI; cpu: scaled down to 2 CPU cores on embedded data; "
                      "paper: the paper's protocol (GPU, CIFAR/ANIMAL-10N on disk)."),
    click.Option(["--results"], type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
                 show_default=True, help="Results root; one run directory per cell and seed."),
    click.Option(["--seeds"], default=None, help="Comma-separated seeds (default: the profile's, e.g. 0,1,2)."),
    click.Option(["--data-root"], type=click.Path(path_type=Path), default=None,
                 help="Folder with CIFAR-10/100, ANIMAL-10N or ImageNet (paper profile)."),
    click.Option(["--download"], is_flag=True, help="Allow torchvision to download CIFAR into --data-root."),
    click.Option(["--force"], is_flag=True, help="Rerun cells that already have a result."),
    click.Option(["--device"], default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
    click.Option(["--mixed-precision"], type=click.Choice(["no", "fp16", "bf16"]), default=None,
                 help="Autocast of the forward passes: bf16 (CPU or GPU), fp16 (for GPUs; DR training with a "
                      "loss scaler; NAS searches take bf16 only). Hypergradient products stay float32. "
                      "[default: no, or what `accelerate launch --mixed_precision` set]"),
    click.Option(["--compile"], is_flag=True,
                 help="torch.compile the networks (inductor; the first steps pay the compilation). Each step equals "
                      "the eager one to rounding, whole runs drift apart; part of the run's identity. "
                      "Data-reweighting experiments only. "
                      "Also set by `accelerate launch --dynamo_backend inductor`."),
    click.Option(["--only"], default=None, help="Run only cells whose row or column contains this text."),
    click.Option(["--set", "set_values"], multiple=True, metavar="KEY=VALUE",
                 help="Override a training or method setting (repeatable), e.g. --set lr=0.02 --set lr_r=1 "
                      "--set encoder=pixels; --print-config lists the keys. Part of the run's identity."),
    click.Option(["--tracker", "trackers"], multiple=True, type=click.Choice(["tensorboard"]),
                 help="Also log each epoch's metrics to this tracker (through Accelerate) in the run directory; "
                      "metrics.jsonl and metrics.csv are always written."),
    click.Option(["--print-config"], is_flag=True,
                 help="Print the resolved configuration of every run this command would make (JSON), and exit."),
]


@cli.command("run", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                      "help_option_names": []})
@click.argument("experiment", shell_complete=_complete_experiment)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run_cmd(experiment: str, args: tuple[str, ...]) -> None:
    """Run EXPERIMENT (see `lfm-bench list`); `lfm-bench run EXPERIMENT --help` shows its options."""
    if experiment in ("-h", "--help"):
        click.echo(click.get_current_context().get_help())
        return
    exp = get_experiment(experiment)

    def body(**kw: Any) -> None:
        _run(exp, **kw)

    command = click.Command(
        name=experiment,
        params=[*COMMON_OPTIONS, *LAUNCH_OPTIONS, *PLAN_OPTIONS, *exp.options(),
                click.Option(["-h", "--help"], is_flag=True, expose_value=False, is_eager=True, callback=_show_help)],
        callback=body,
        help=f"{exp.title}\n\n{exp.__doc__ or ''}",
    )
    command.main(list(args), prog_name=f"lfm-bench run {experiment}", standalone_mode=False)


def _show_help(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        click.echo(ctx.get_help())
        ctx.exit(0)


def _parse_seeds(text: str | None, default: list[int]) -> list[int]:
    if text is None:
        return list(default)
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or any(not 0 <= s < 2**32 for s in seeds):
        raise UsageError(f"bad --seeds {text!r}: expected comma-separated integers in [0, 2**32) such as 0,1,2")
    return list(dict.fromkeys(seeds))  # each seed once


def _run(exp, profile: str, results: Path, seeds: str | None, data_root: Path | None, download: bool,
         force: bool, device: str | None, mixed_precision: str | None, only: str | None, print_config: bool,
         compile: bool = False, set_values: tuple[str, ...] = (), trackers: tuple[str, ...] = (), **options: Any) -> None:
    from lfm_core.report import render_terminal
    from lfm_core.results import collect_results
    from lfm_core.launch import launch_options, shard_of
    from lfm_core.runner import check_trackers, resolve_config, run_dir_for
    from lfm_core.runtime import check_device, launch_compile, launch_mixed_precision

    launch = launch_options(options)  # the --launcher family out of the experiment's options
    check_profile(profile)
    plan = take_plan_options(options)
    mixed_precision = launch_mixed_precision(mixed_precision)
    compile = launch_compile(compile)
    if compile and not exp.supports_compile:
        raise UsageError(f"--compile is not supported by {exp.name}; it applies to the data-reweighting "
                         "experiments (lfm-bench list)")
    check_trackers(trackers)
    if set_values:
        options["set"] = parse_set(set_values)
    if data_root is not None and not data_root.exists():
        raise UsageError(f"--data-root {data_root} does not exist; give a folder holding the data set")
    try:
        exp.validate(profile, {**options, "data_root": data_root, "only": only})  # checks the cells --only keeps
    except DataNotFoundError as exc:
        if plan is None:
            raise
        # planning (e.g. on a login node) needs no data or weights yet; the run will
        console.print(f"[yellow]note:[/] {escape(str(exc))} (the plan goes on; the runs need it)", highlight=False,
                      soft_wrap=True)
    seed_list = _parse_seeds(seeds, exp.seeds[profile])
    if launch.launcher == "slurm":  # the tasks' nodes have the devices, not this one (a login node)
        device = device or ("cuda" if launch.gpus_per_task else "cpu")
    else:
        check_device(device)
    cells = exp.cells(profile, {**options, "data_root": data_root})
    if only:
        cells = [c for c in cells if selected(c, only)]
    if not cells:
        raise UsageError(f"no cell of {exp.name} matches --only {only!r}")
    runtime: dict[str, Any] = dict(data_root=str(data_root) if data_root else None, device=device,
                                   mixed_precision=mixed_precision, compile=compile)
    if print_config:
        configs = []
        for cell in cells:
            for seed in seed_list:
                config = resolve_config(exp, cell, profile, seed, _jsonable(options), **runtime)
                configs.append({"run_dir": str(run_dir_for(results, config)), **config})
        out.file.write(json.dumps(configs, indent=2) + "\n")
        return
    if plan is not None and maybe_plan(exp, plan, [resolve_config(exp, c, profile, s, _jsonable(options), **runtime)
                                                   for c in cells for s in seed_list], results, out):
        return
    console.print(f"[bold]{exp.name}[/]: {exp.title}")
    console.print(f"profile [cyan]{profile}[/], {len(cells)} cells x {len(seed_list)} seeds, results in {results}")
    description = exp.describe(profile, {**options, "data_root": data_root})
    if description:
        console.print(description)

    _install_signal_handlers()
    jobs = shard_of([(c, s) for c in cells for s in seed_list], launch.shard)
    if launch.shard:
        console.print(f"shard {launch.shard[0]}/{launch.shard[1]}: {len(jobs)} of the {len(cells) * len(seed_list)} runs")
    failed: int | None = 0
    if launch.launcher == "inline":
        _run_inline(exp, jobs, profile, results, force, _jsonable(options), download, trackers, runtime)
    else:
        failed = _launch(exp, jobs, profile, results, force, _jsonable(options), download, trackers, runtime, launch)
        if failed is None:  # --no-wait
            return
    # every seed already run of these configurations (e.g. by earlier commands or other shards), and
    # nothing else: another engine, epoch budget or noise type is another configuration
    wanted = {resolve_config(exp, cell, profile, seed_list[0], _jsonable(options), **runtime)["config_id"]
              for cell in cells}
    all_records = [r for r in collect_results(results) if r["config_id"] in wanted]
    render_terminal(exp, all_records, profile, out)
    if failed:
        raise LFMError(f"{failed} run(s) failed (see the lines above); rerun the same command to retry them")


def _run_inline(exp, jobs, profile: str, results: Path, force: bool, options: dict[str, Any], download: bool,
                trackers: tuple[str, ...], runtime: dict[str, Any]) -> None:
    """Every run in this process, one after the other (the default launcher)."""
    from lfm_core.runner import run_one

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as bar:
        total = bar.add_task("cells", total=len(jobs))
        inner = bar.add_task("", total=1, visible=False)

        def progress(done: int, n: int, text: str = "") -> None:
            bar.update(inner, completed=done, total=max(n, 1), description=f"  {text}", visible=True)

        for cell, seed in jobs:
            bar.update(total, description=f"{cell.row} | {cell.column} | seed {seed}")
            bar.reset(inner, total=1, visible=False)
            record, computed = run_one(
                exp, cell, profile, seed, results, force=force, options=options,
                progress=progress, echo=lambda t: bar.console.print(t), download=download, trackers=trackers,
                **runtime,
            )
            tag = "ran" if computed else "cached"
            bar.console.print(f"  {tag}: {cell.row} | {cell.column} | seed {seed}: "
                              f"{exp.metric}={record['metrics'][exp.metric]:.2f} ({record['wall_s']:.0f}s)")
            bar.advance(total)
            stop_if_requested(f"after {cell.row} | {cell.column} | seed {seed} (saved)")


def _launch(exp, jobs, profile: str, results: Path, force: bool, options: dict[str, Any], download: bool,
            trackers: tuple[str, ...], runtime: dict[str, Any], launch) -> int | None:
    """The runs not finished yet as tasks of --launcher local or slurm; returns how many failed
    (None: --no-wait returned after submitting)."""
    from lfm_core.launch import RunTask, run_tasks
    from lfm_core.runner import finished_record, resolve_config, run_dir_for

    tasks = []
    for cell, seed in jobs:
        config = resolve_config(exp, cell, profile, seed, options, **runtime)
        run_dir = run_dir_for(results, config)
        if not force and finished_record(exp, run_dir, config) is not None:
            console.print(f"  cached: {cell.row} | {cell.column} | seed {seed}", highlight=False)
            continue
        tasks.append(RunTask(exp.name, cell, profile, seed, str(Path(results).resolve()), options, runtime,
                             str(run_dir.resolve()), download=download, trackers=tuple(trackers), force=force))
    if not tasks:
        return 0
    command = "lfm-bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else f"lfm-bench run {exp.name}"
    outcome = run_tasks(tasks, launch, results, console, command)
    return len(outcome.failed) if outcome.submitted else None


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()}


def _install_signal_handlers() -> None:
    # Training loops turn SIGTERM/SIGINT into a graceful stop (lfm_core.stopping); elsewhere
    # (data loading, evaluation networks) SIGTERM ends the run at once like Ctrl-C: it resumes
    # from its last checkpoint.
    def handler(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


@cli.command("report")
@click.argument("experiments", nargs=-1)
@click.option("--results", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True, help="Results root to collect.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports"),
              show_default=True, help="Where to write tables (md/csv/tex), figures (png) and README.md.")
@click.option("--profile", type=click.Choice(PROFILE_NAMES), default=None, help="Only runs of this profile.")
@click.option("--where", multiple=True, metavar="KEY=VALUE",
              help="Only runs whose results column KEY equals VALUE (repeatable), e.g. engine=exact or "
                   "settings.train.epochs=12; the columns are those of lfm_core.load_results.")
def report_cmd(experiments: tuple[str, ...], results: Path, out_dir: Path, profile: str | None,
               where: tuple[str, ...]) -> None:
    """Rebuild tables and figures from every run under --results, beside the paper's numbers.

    Only seeds of one configuration are averaged; a cell run with several configurations (two
    engines, two epoch budgets) shows each on its own labelled line."""
    from lfm_core.report import write_report

    if not results.exists():
        raise UsageError(f"--results {results} does not exist; run an experiment first (lfm-bench run table7)")
    names = list(experiments) or EXPERIMENTS.names()
    for name in names:
        EXPERIMENTS.get(name)  # unknown names fail before anything is written
    conditions = {}
    for item in where:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"bad --where {item!r}: expected KEY=VALUE, e.g. engine=exact")
        conditions[key] = value
    written = write_report(results, out_dir, names, profile=profile, where=conditions)
    for path in written:
        out.print(str(path))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    from lfm_core.runtime import is_main_process

    if not is_main_process():  # a multi-process launch prints once, from rank 0
        console.quiet = out.quiet = True
    debug = "--debug" in argv or os.environ.get("LFM_DEBUG") == "1"
    try:
        cli.main(argv, prog_name="lfm-bench", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        if debug:
            raise
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        term = f"signal {signal.SIGTERM.value}" in str(exc.__cause__ or exc)  # click wraps it in Abort
        console.print(f"interrupted by {'SIGTERM' if term else 'Ctrl-C'}; rerun the same command to resume")
        sys.exit(143 if term else 130)
    except GracefulStop as exc:
        console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except LFMError as exc:
        if debug:
            raise
        console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except OSError as exc:  # full disk, read-only folder, a path under a file, a name too long...
        if debug:
            raise
        console.print(f"[red]error:[/] {escape(os_error_line(exc))}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
