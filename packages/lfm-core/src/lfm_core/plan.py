"""``lfm-bench run EXP --plan``: what a command would cost before anything runs.

Per row of the experiment: how many runs (cells x seeds) and how many of them are already
finished under ``--results``, the training steps per run (from each run's resolved config), the
time of one step per method and model, and the device-hours of the runs still to do.

Step times come from ``step_costs.json`` (package data, written by
``benchmarks/plan_costs.py`` from the committed ``benchmarks/results/<device>.json``), one entry
per device name given to ``--plan-device``. Only some method/model pairs were measured; the
single-network baselines are estimated from the measured cross-entropy step by the passes they
make (marked ``~``), and a pair with neither shows ``?`` and no hours.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import click

from lfm_core.errors import check_choice

# One training step of a baseline, in cross-entropy steps of the same network: estimates, used
# where a device's table has only the CE step. Single-network losses cost one CE step; Co-teaching
# trains two networks; L2RW and Meta-Weight-Net take a virtual step with a graph, backpropagate the
# meta loss through it and take the real step (`--plan` timed them at 4-5 CE steps on 2 CPU cores,
# paper shapes; Co-teaching at 1.5-2).
CE_MULTIPLES = {"ce": 1.0, "focal": 1.0, "class_balanced": 1.0, "finetune": 1.0, "glc": 1.0,
                "coteaching": 2.0, "l2rw": 4.0, "mwn": 4.0}
# methods that cost what another measured method costs (LFM-DR+ is LFM-DR with other learning rates
# and an offset on the paper profile)
SAME_AS = {"lfm_plus": "lfm"}
# training-set size per class of the data sets that are not read to plan (the paper's)
CLASS_SIZES = {"cifar10": (10, 5000), "cifar100": (100, 500)}
# training-set sizes of the NAS evaluation data sets (CIFAR: 50k; ImageNet-1k: 1,281,167)
EVAL_SIZES = {"cifar": 50_000, "imagenet": 1_281_167}
MEASURED_STEPS = 3  # steps timed per method and network by --plan without --plan-device


@dataclass(frozen=True)
class DeviceCosts:
    """Seconds per training step on one named device, keyed ``dr/<model>/<method>[/<engine>]``."""

    name: str
    device: str
    source: str
    steps: dict[str, float]


@dataclass
class PlanRow:
    row: str
    runs: int = 0
    finished: int = 0
    steps: dict[str, set[int | None]] = field(default_factory=dict)  # step label -> the steps per run seen
    step_s: dict[str, float | None] = field(default_factory=dict)  # step label -> seconds (None: unknown)
    estimated: set[str] = field(default_factory=set)  # step labels whose time is an estimate
    hours: float | None = 0.0  # device-hours of the runs still to do; None when a step time is unknown

    @property
    def to_run(self) -> int:
        return self.runs - self.finished


@dataclass
class Plan:
    experiment: str
    profile: str
    device: str  # what the step times are for
    source: str
    rows: list[PlanRow]

    @property
    def runs(self) -> int:
        return sum(r.runs for r in self.rows)

    @property
    def finished(self) -> int:
        return sum(r.finished for r in self.rows)

    @property
    def hours(self) -> float | None:
        """Device-hours of everything still to run; None when some row's step time is unknown."""
        hours = [r.hours for r in self.rows if r.to_run]
        known = [h for h in hours if h is not None]
        return sum(known) if len(known) == len(hours) else None

    @property
    def known_hours(self) -> float:
        return sum(r.hours or 0.0 for r in self.rows)


def load_costs() -> dict[str, DeviceCosts]:
    """The committed step costs per device name (``lfm_core/step_costs.json``)."""
    text = resources.files("lfm_core").joinpath("step_costs.json").read_text()
    return {name: DeviceCosts(name=name, device=entry["device"], source=entry["source"], steps=entry["steps"])
            for name, entry in json.loads(text).items()}


def device_costs(name: str) -> DeviceCosts:
    """The step costs of ``--plan-device NAME``; a one-line error naming the choices otherwise."""
    costs = load_costs()
    check_choice("--plan-device", name, sorted(costs))
    return costs[name]


# -- steps per run ------------------------------------------------------------------------------
def dr_train_size(data: dict[str, Any]) -> int | None:
    """Training examples of a DR run after its meta set, imbalance and cap (as make_splits builds them)."""
    name = data["dataset"]
    per_class: list[int] | None
    if name in CLASS_SIZES:
        k, n = CLASS_SIZES[name]
        per_class = [n] * k
    else:
        per_class = _read_class_counts(name, data)
        if per_class is None:
            return None
        k = len(per_class)
    rest = [c - int(data.get("meta_per_class") or 0) for c in per_class]
    if data.get("imbalance") not in (None, "none"):
        from lfm_core.imbalance import longtail_counts, step_counts

        counts = {"longtail": longtail_counts, "step": step_counts}.get(data["imbalance"])
        if counts is None:
            return None
        rest = counts(min(rest), k, float(data.get("factor", 1.0)))
    n = sum(rest)
    return min(n, int(data["max_train"])) if data.get("max_train") else n


def _read_class_counts(name: str, data: dict[str, Any]) -> list[int] | None:
    """Per-class training counts of an embedded data set; None for others."""
    from lfm_core.data import load_dataset
    from lfm_core.identity import EMBEDDED

    if name not in EMBEDDED:  # e.g. an image folder: not read just to plan
        return None
    kwargs = {"image_size": data["image_size"]} if "image_size" in data else {}
    bundle = load_dataset(name, **kwargs)
    labels = bundle.train.labels.tolist()
    return [labels.count(c) for c in range(bundle.num_classes)]


def dr_step(config: dict[str, Any]) -> tuple[str, str]:
    """(cost key, label) of one DR run's training step."""
    st = config["settings"]
    method, model = st["method"]["name"], st["model"]["name"]
    engine = (st["method"].get("options") or {}).get("engine")
    key = f"dr/{model}/{method}" + (f"/{engine}" if engine and engine != "exact" else "")
    return key, f"{method} {model}" + (f" ({engine})" if engine and engine != "exact" else "")


def run_steps(config: dict[str, Any]) -> dict[str, tuple[str, int | None]]:
    """The training steps one run makes: {cost key: (label, steps)}; steps None when unknown."""
    st = config["settings"]
    if "train" in st:  # data reweighting: epochs x full batches of the training set
        key, label = dr_step(config)
        n = dr_train_size(st["data"])
        batch = int(st["train"]["batch_size"])
        per_epoch = None if n is None else (n // batch if n >= batch else 1)
        return {key: (label, None if per_epoch is None else int(st["train"]["epochs"]) * per_epoch)}
    if "settings" in st:  # architecture search, then the evaluation network from scratch
        return _nas_steps(config)
    return {}


def _nas_steps(config: dict[str, Any]) -> dict[str, tuple[str, int | None]]:
    s, params = config["settings"]["settings"], config["params"]
    method = params["method"]
    sizes = {"cifar10": 50_000, "cifar100": 50_000}
    pool = s.get("search_pool") or sizes.get(params.get("dataset"))
    per_epoch = s.get("steps_per_epoch") or (None if pool is None else (pool // 2) // int(s["batch_size"]))
    epochs = int(s["pdarts_epochs"]) * len(s["pdarts_layers"]) if method.endswith("pdarts") else int(s["search_epochs"])
    steps: dict[str, tuple[str, int | None]] = {
        f"nas/search/{method}": (f"search {method}", None if per_epoch is None else epochs * int(per_epoch))}
    if params.get("measure") in (None, "error", "top1", "top5"):
        if params.get("eval") == "imagenet":
            n, batch, ep, key = EVAL_SIZES["imagenet"], s["imagenet_batch"], s["imagenet_epochs"], "imagenet"
        else:
            n, batch, ep, key = EVAL_SIZES["cifar"], s["eval_batch"], s["eval_epochs"], "cifar"
        steps[f"nas/eval/{key}"] = (f"evaluate ({key})", int(ep) * math.ceil(n / int(batch)))
    return steps


def _search_key(config: dict[str, Any]) -> str:
    """NAS cells that differ only in how the found architecture is evaluated share one search."""
    params = {k: v for k, v in config["params"].items() if k not in ("eval", "measure")}
    return json.dumps([config["experiment"], params, config["seed"]], sort_keys=True)


# -- the plan -----------------------------------------------------------------------------------
def step_time(key: str, costs: DeviceCosts | None) -> tuple[float | None, bool]:
    """(seconds per step, whether estimated) of a cost key on the device; (None, False) when unknown."""
    if costs is None:
        return None, False
    if key in costs.steps:
        return float(costs.steps[key]), False
    kind, model, method, *rest = key.split("/") + [""]
    if kind == "dr" and method in SAME_AS:
        same = "/".join([kind, model, SAME_AS[method], *[r for r in rest if r]])
        if same in costs.steps:
            return float(costs.steps[same]), True
    ce = costs.steps.get(f"dr/{model}/ce")
    if kind == "dr" and method in CE_MULTIPLES and ce is not None and not any(rest):
        return CE_MULTIPLES[method] * float(ce), True
    return None, False


def is_finished(config: dict[str, Any], run_dir: Path, metric: str) -> bool:
    """A finished result of exactly this config (what ``run`` would reuse instead of running)."""
    from lfm_core.validate import read_result

    path = run_dir / "result.json"
    if not path.exists():
        return False
    record = read_result(path, metric)
    return record is not None and record.get("config") == config


def plan_table(exp: Any, configs: list[dict[str, Any]], results_root: Path, costs: DeviceCosts | None) -> Plan:
    """The plan of these resolved configs (one per cell and seed, in order), rows in first-seen order."""
    from lfm_core.runner import run_dir_for

    rows: dict[str, PlanRow] = {}
    searched: set[str] = set()
    for config in configs:
        row = rows.setdefault(config["row"], PlanRow(row=config["row"]))
        row.runs += 1
        done = is_finished(config, run_dir_for(results_root, config), exp.metric)
        row.finished += done
        for key, (label, steps) in run_steps(config).items():
            shared = key.startswith("nas/search/") and _search_key(config) in searched
            seconds, estimated = step_time(key, costs)
            row.steps.setdefault(label, set()).add(steps)
            row.step_s[label] = seconds
            if estimated:
                row.estimated.add(label)
            if done or shared:
                continue
            if steps is None or seconds is None or row.hours is None:
                row.hours = None
            else:
                row.hours += steps * seconds / 3600.0
        if "settings" in config["settings"]:
            searched.add(_search_key(config))
    device = costs.device if costs else "(no step costs)"
    return Plan(experiment=exp.name, profile=configs[0]["profile"] if configs else "", device=device,
                source=costs.source if costs else "", rows=list(rows.values()))


def _seconds(value: float | None, estimated: bool) -> str:
    if value is None:
        return "?"
    text = f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    return ("~" if estimated else "") + text


def _steps(values: set[int | None]) -> str:
    known = [v for v in values if v is not None]
    if len(known) < len(values):
        return "?"
    low, high = min(known), max(known)
    return f"{low:,}" if low == high else f"{low:,}-{high:,}"


def _hours(value: float | None) -> str:
    return "?" if value is None else f"{value:,.1f}"


def render_plan(plan: Plan, console: Any) -> None:
    """Print the plan as a table: one line per row (one per step kind of a run), then the total."""
    from rich.table import Table

    table = Table("row", "runs", "done", "steps of", "steps/run", "step", f"hours, {plan.device}",
                  title=f"{plan.experiment}, {plan.profile} profile: runs still to do and their cost", box=None)
    for r in plan.rows:
        labels = list(r.steps)
        table.add_row(r.row, str(r.runs), str(r.finished), "\n".join(labels),
                      "\n".join(_steps(r.steps[k]) for k in labels),
                      "\n".join(_seconds(r.step_s[k], k in r.estimated) for k in labels), _hours(r.hours))
    total = plan.hours
    table.add_row("total", str(plan.runs), str(plan.finished), "", "", "",
                  _hours(total) if total is not None else f">= {plan.known_hours:,.1f} (? unknown)", end_section=True)
    console.print(table)
    if plan.source:
        console.print(f"step times: {plan.source}; ~ estimated from the cross-entropy step by passes per step; "
                      "? not measured there", soft_wrap=True)
    else:
        console.print("step times: none committed for this device; give --plan-device "
                      f"({', '.join(sorted(load_costs()))})", soft_wrap=True)


# -- the CLI hook ---------------------------------------------------------------------------------
PLAN_OPTIONS: list[click.Option] = [
    click.Option(["--plan"], is_flag=True,
                 help="Print, per row, the runs (and how many are finished in --results), steps per run, step "
                      "time and device-hours, and exit without running anything."),
    click.Option(["--plan-device"], default=None, metavar="NAME",
                 help="Step times measured on this device, e.g. cuda-h200 (with --plan); "
                      "choices: those in lfm_core/step_costs.json."),
]


@dataclass(frozen=True)
class PlanRequest:
    """``--plan`` was given; with the step costs of ``--plan-device`` (None: measure them now)."""

    costs: DeviceCosts | None


def take_plan_options(options: dict[str, Any]) -> PlanRequest | None:
    """Take ``--plan`` and ``--plan-device`` out of a command's options (they are no part of any
    run's identity) and check them before any work: None without ``--plan``."""
    plan_flag = bool(options.pop("plan", False))
    name = options.pop("plan_device", None)
    if not plan_flag:
        if name is not None:
            from lfm_core.errors import UsageError

            raise UsageError(f"--plan-device {name} needs --plan")
        return None
    return PlanRequest(device_costs(name) if name is not None else None)


def maybe_plan(exp: Any, request: PlanRequest | None, configs: list[dict[str, Any]], results: Path,
               console: Any) -> bool:
    """With ``--plan`` (a request): print the plan of these resolved configs and return True.

    Without ``--plan-device`` the step times are measured now on the runs' device."""
    if request is None:
        return False
    costs = request.costs or measure_costs(exp, configs)
    render_plan(plan_table(exp, configs, Path(results), costs), console)
    return True


def measure_costs(exp: Any, configs: list[dict[str, Any]], repeats: int = MEASURED_STEPS,
                  device: str | None = None) -> DeviceCosts:
    """Time ``repeats`` training steps (after one warm-up) of each distinct method and network of
    these configs, with the experiment's ``step_timer`` (experiments without one: not timed)."""
    import statistics
    import time

    import torch

    timer_of = getattr(exp, "step_timer", None)
    if device is None and configs:
        device = (configs[0].get("runtime") or {}).get("device_type")
    steps: dict[str, float] = {}
    if timer_of is not None:
        for config in configs:
            for key, (label, _) in run_steps(config).items():
                if key in steps:
                    continue
                click.echo(f"timing {label}: 1 + {repeats} steps ...", err=True)
                step = timer_of(config, device)
                step()
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    step()
                    times.append(time.perf_counter() - start)
                steps[key] = statistics.median(times)
                del step
    name = (torch.cuda.get_device_name(0) if torch.cuda.is_available() and device != "cpu"
            else f"cpu x{torch.get_num_threads()} threads")
    return DeviceCosts(name="measured", device=name, steps=steps,
                       source=f"measured now on {name}: median of {repeats} steps after 1 warm-up, synthetic "
                              "batches of each run's shapes")
