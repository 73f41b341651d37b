"""End-to-end tests of `lfm-bench`: listing, bad input, a smoke run, report, resume, checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

CLI = [sys.executable, "-m", "lfm_core.cli"]


class Evil:  # any pickled object: weights_only loading must refuse it
    pass


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def assert_one_line_error(proc, code: int, *words: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    text = proc.stderr.strip()
    for w in words:
        assert w in text, (w, text)


def test_list_shows_dr_experiments():
    proc = run("list")
    assert proc.returncode == 0
    for name in ("table6", "table7", "table8", "table9", "figure6", "figure7", "figure8", "ablation_dr"):
        assert name in proc.stdout


def test_python_m_lfm_core_and_list_json():
    proc = subprocess.run([sys.executable, "-m", "lfm_core", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "0.1.0" in proc.stdout
    entries = json.loads(run("list", "--json").stdout)
    assert {"name": "table7", "kind": "table", "package": "lfm-dr"}.items() <= next(
        e for e in entries if e["name"] == "table7").items()
    assert "lfm" in json.loads(run("list", "-r", "methods", "--json").stdout)


def test_shell_completion_of_experiment_names():
    env = {**os.environ, "_LFM_BENCH_COMPLETE": "bash_complete", "COMP_WORDS": "lfm-bench run table", "COMP_CWORD": "2"}
    proc = subprocess.run([sys.executable, "-m", "lfm_core"], capture_output=True, text=True, env=env)
    assert "plain,table7" in proc.stdout.splitlines() and "plain,figure6" not in proc.stdout.splitlines()


def test_results_are_written_readable_by_others(tmp_path):
    from lfm_core.io import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "result.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "result.json").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    "args, code, words",
    [
        (("run", "tabel7"), 2, ["unknown experiment 'tabel7'", "Did you mean 'table7'"]),
        (("run", "table7", "--noise", "gaussian"), 2, ["gaussian", "flip"]),
        (("run", "table7", "--profile", "gpu"), 2, ["gpu", "smoke"]),
        (("run", "table7", "--seeds", "a,b"), 2, ["--seeds", "a,b"]),
        (("run", "table7", "--data-root", "/no/such/dir"), 2, ["/no/such/dir", "does not exist"]),
        (("run", "table7", "--methods", "Magic"), 2, ["Magic", "LFM-DR"]),
        (("run", "table7", "--profile", "paper"), 1, ["CIFAR10", "--data-root"]),
        (("run", "table9", "--profile", "paper"), 1, ["ANIMAL-10N", "--data-root"]),
        (("list", "-r", "noize"), 2, ["noize"]),
        (("run", "table7", "--rates", "1.5"), 2, ["1.5", "outside [0, 1]"]),
        (("run", "table7", "--rates", "-0.1"), 2, ["-0.1", "outside [0, 1]"]),
        (("run", "table7", "--rates", "0.3"), 2, ["0.3", "Valid choices: 0, 0.2, 0.4"]),
        (("run", "table7", "--profile", "paper", "--data-root", "/tmp"), 1, ["CIFAR10", "/tmp"]),
        (("run", "table7", "--engine", "magic"), 2, ["magic", "exact"]),
        (("run", "table7", "--engine", "first-order"), 2, ["first-order", "zero", "Valid choices: exact"]),
        (("run", "table7", "--mixed-precision", "fp8"), 2, ["fp8", "bf16"]),
        (("run", "table7", "--set", "meta_layers=lst"), 2, ["'lst'", "Did you mean 'last'", "all, last"]),
        (("run", "table7", "--set", "meta_every=0"), 2, ["meta_every", "got 0"]),
        (("report", "--results", "/no/such/results"), 2, ["/no/such/results"]),
    ],
)
def test_bad_input_is_one_clear_line(args, code, words, tmp_path):
    proc = run(*args, "--results", str(tmp_path / "r")) if args[0] == "run" else run(*args)
    assert_one_line_error(proc, code, *words)
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("result.json"))


def test_smoke_run_report_and_cache(tmp_path):
    res, out = tmp_path / "results", tmp_path / "report"
    proc = run("run", "table7", "--profile", "smoke", "--results", str(res))
    assert proc.returncode == 0, proc.stderr
    assert "| 89.06 ± 0.17 |" in proc.stdout and "LFM-DR" in proc.stdout  # piped: full-width Markdown
    results = sorted(res.rglob("result.json"))
    assert len(results) == 2
    rec = json.loads(results[-1].read_text())
    assert rec["profile"] == "smoke" and "test_acc" in rec["metrics"]
    for f in ("config.json", "metrics.jsonl", "log.txt", "checkpoint.pt"):
        assert (results[-1].parent / f).exists()
    again = run("run", "table7", "--profile", "smoke", "--results", str(res))
    assert again.returncode == 0 and "cached" in again.stderr
    rep = run("report", "table7", "--results", str(res), "--out", str(out))
    assert rep.returncode == 0, rep.stderr
    md = (out / "table7.md").read_text()
    assert "89.06 ± 0.17" in md and "not run" in md and "cited" in md
    assert (out / "table7.tex").read_text().count(r"\toprule") == 1


def test_a_changed_option_is_a_new_run_and_the_old_one_stays(tmp_path):
    res, out = tmp_path / "results", tmp_path / "report"
    args = ["run", "table7", "--profile", "smoke", "--methods", "Base Model", "--results", str(res)]
    one = run(*args, "--epochs", "1")
    two = run(*args, "--epochs", "2")
    assert one.returncode == two.returncode == 0, (one.stderr, two.stderr)
    assert "ran:" in two.stderr and "cached" not in two.stderr
    records = [json.loads(p.read_text()) for p in res.rglob("result.json")]
    assert sorted(r["config"]["settings"]["train"]["epochs"] for r in records) == [1, 2]
    acc = {r["config"]["settings"]["train"]["epochs"]: f"{r['metrics']['test_acc']:.2f}" for r in records}
    assert acc[1] != acc[2]
    again = run(*args, "--epochs", "1")  # reused, and its table shows only the run asked for
    assert "cached" in again.stderr and f"| {acc[1]} |" in again.stdout and f"| {acc[2]} |" not in again.stdout
    rep = run("report", "table7", "--results", str(res), "--out", str(out))
    md = (out / "table7.md").read_text()
    assert rep.returncode == 0, rep.stderr
    assert "[epochs=1" in md and "[epochs=2" in md and "never averaged together" in md


def test_print_config_shows_the_resolved_runs_without_running(tmp_path):
    proc = run("run", "table7", "--profile", "smoke", "--results", str(tmp_path / "r"), "--print-config",
               "--engine", "forward-difference")
    assert proc.returncode == 0, proc.stderr
    configs = json.loads(proc.stdout)
    assert len(configs) == 2 and not (tmp_path / "r").exists()
    lfm = next(c for c in configs if c["params"]["method"] == "lfm")
    assert lfm["settings"]["method"]["options"]["engine"] == "forward-difference"
    assert lfm["settings"]["train"]["epochs"] == 2 and lfm["run_dir"].endswith("seed0")
    assert lfm["config_id"] in lfm["run_dir"]


def test_set_overrides_are_recorded_and_make_new_runs(tmp_path):
    def configs(*extra):
        proc = run("run", "table7", "--profile", "smoke", "--results", str(tmp_path), "--print-config", *extra)
        assert proc.returncode == 0, proc.stderr
        return {c["row"]: c for c in json.loads(proc.stdout)}

    plain, changed = configs(), configs("--set", "lr=0.02", "--set", "lr_r=1")
    assert changed["LFM-DR"]["settings"]["train"]["lr"] == 0.02
    assert changed["LFM-DR"]["settings"]["method"]["options"]["lr_r"] == 1
    assert changed["LFM-DR"]["overrides"] == {"lr": 0.02, "lr_r": 1}
    assert changed["Base Model"]["overrides"] == {"lr": 0.02}  # lr_r is not a CE option: not its identity
    for row in plain:
        assert plain[row]["run_dir"] != changed[row]["run_dir"]
    assert configs("--set", "lr_r=1")["Base Model"]["run_dir"] == plain["Base Model"]["run_dir"]
    bad = run("run", "table7", "--profile", "smoke", "--results", str(tmp_path), "--set", "lr_q=1")
    assert_one_line_error(bad, 2, "lr_q", "Did you mean", "lr_r")
    bad = run("run", "table7", "--profile", "smoke", "--results", str(tmp_path), "--set", "lr=fast")
    assert_one_line_error(bad, 2, "lr='fast'", "float")


def test_logs_csv_and_tensorboard_tracker(tmp_path):
    pytest.importorskip("tensorboard")
    res = tmp_path / "r"
    proc = run("run", "table7", "--profile", "smoke", "--methods", "Base Model", "--epochs", "2",
               "--tracker", "tensorboard", "--results", str(res))
    assert proc.returncode == 0, proc.stderr
    run_dir = next(res.rglob("result.json")).parent
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    csv = (run_dir / "metrics.csv").read_text().splitlines()
    assert csv[0].startswith("epoch,") and len(csv) == 3 and "test_acc" in csv[0]
    log = (run_dir / "log.txt").read_text()
    assert "] start table7 smoke Base Model" in log and "] done in" in log


def test_accelerate_launch_mixed_precision_is_honoured_or_refused(tmp_path):
    env = {**os.environ, "ACCELERATE_MIXED_PRECISION": "bf16"}
    args = [*CLI, "run", "table7", "--profile", "smoke", "--results", str(tmp_path), "--print-config"]
    ok = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert {c["runtime"]["mixed_precision"] for c in json.loads(ok.stdout)} == {"bf16"}
    clash = subprocess.run([*args, "--mixed-precision", "fp16"], capture_output=True, text=True, env=env, timeout=300)
    assert_one_line_error(clash, 2, "fp16", "accelerate launch --mixed_precision bf16")
    single = {**os.environ, "ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1"}
    one = subprocess.run(args, capture_output=True, text=True, env=single, timeout=300)
    assert_one_line_error(one, 2, "single process", "--multi_gpu", "torchrun")


def test_compile_is_part_of_the_identity_and_refused_where_unsupported(tmp_path):
    def configs(*extra, env=None):
        proc = subprocess.run([*CLI, "run", "table7", "--profile", "smoke", "--results", str(tmp_path),
                               "--print-config", *extra], capture_output=True, text=True, timeout=300,
                              env={**os.environ, **(env or {})})
        assert proc.returncode == 0, proc.stderr
        return {c["row"]: c for c in json.loads(proc.stdout)}

    plain, compiled = configs(), configs("--compile")
    assert "compile" not in plain["LFM-DR"]["runtime"]  # earlier runs keep their config_id
    assert compiled["LFM-DR"]["runtime"]["compile"] is True
    assert plain["LFM-DR"]["run_dir"] != compiled["LFM-DR"]["run_dir"]
    launched = configs(env={"ACCELERATE_DYNAMO_BACKEND": "INDUCTOR"})
    assert launched["LFM-DR"]["config_id"] == compiled["LFM-DR"]["config_id"]
    other = run("run", "table7", "--profile", "smoke", "--results", str(tmp_path), "--print-config")
    env = {**os.environ, "ACCELERATE_DYNAMO_BACKEND": "AOT_EAGER"}
    bad = subprocess.run([*CLI, "run", "table7", "--profile", "smoke", "--results", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert other.returncode == 0
    assert_one_line_error(bad, 2, "aot_eager", "inductor")
    nas = run("run", "table10", "--profile", "smoke", "--results", str(tmp_path), "--compile")
    assert_one_line_error(nas, 2, "--compile", "table10")


def test_piped_output_keeps_every_digit(tmp_path):
    proc = run("run", "table10", "--profile", "smoke", "--only", "Memory", "--results", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    assert "23702" in proc.stdout and "…" not in proc.stdout


def _result(res: Path) -> dict:
    (path,) = list(res.rglob("result.json"))
    return json.loads(path.read_text())["metrics"]


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    args = ["run", "table7", "--profile", "smoke", "--methods", "LFM-DR", "--epochs", "8"]
    ref = run(*args, "--results", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    res = tmp_path / "killed"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([*CLI, *args, "--results", str(res)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while time.time() < deadline:
        metrics = list(res.rglob("metrics.jsonl"))
        if metrics and len(metrics[0].read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(res.rglob("result.json")), "the run finished before it could be killed"
    resumed = run(*args, "--results", str(res))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at epoch" in next(res.rglob("log.txt")).read_text()
    a, b = _result(tmp_path / "ref"), _result(res)
    assert a["test_acc"] == b["test_acc"] and a["test_acc_w1"] == b["test_acc_w1"]
    assert a["b_mean"] == pytest.approx(b["b_mean"], abs=1e-6)


def test_corrupt_and_pickled_checkpoints_are_refused(tmp_path):
    args = ["run", "table7", "--profile", "smoke", "--methods", "Base Model", "--results", str(tmp_path)]
    assert run(*args).returncode == 0
    (result,) = list(tmp_path.rglob("result.json"))
    ckpt = result.parent / "checkpoint.pt"
    result.unlink()
    ckpt.write_bytes(b"not a checkpoint")
    assert_one_line_error(run(*args), 1, "cannot load checkpoint", "--force")

    torch.save({"epoch": 1, "payload": Evil()}, ckpt)
    assert_one_line_error(run(*args), 1, "cannot load checkpoint")
    assert not result.exists()
    assert run(*args, "--force").returncode == 0 and result.exists()


def test_a_run_in_use_is_refused(tmp_path):
    args = ["run", "table7", "--profile", "smoke", "--methods", "Base Model", "--results", str(tmp_path)]
    cell_dir = tmp_path / "table7" / "smoke"
    proc = run(*args, "--epochs", "1")
    assert proc.returncode == 0
    (result,) = list(cell_dir.rglob("result.json"))
    result.unlink()
    from lfm_core.locking import RunLock

    with RunLock(result.parent / ".lock"):  # this (alive) process holds it
        assert_one_line_error(run(*args, "--epochs", "1"), 1, "in use by process", str(os.getpid()))
    (result.parent / ".lock").write_text("999999999")  # left by a killed run: nobody holds it
    assert run(*args, "--epochs", "1").returncode == 0


def _launch_two(*args: str) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 -m lfm_core.cli ...` on CPU (gloo), on a free port."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", port, "-m", "lfm_core.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def test_accelerate_launch_two_processes_bf16(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` (gloo on CPU) with bf16: one result, config bf16."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    res = tmp_path / "results"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no", "--main_process_port", port,
           "-m", "lfm_core.cli", "run", "table7", "--profile", "smoke", "--methods", "LFM-DR", "--seeds", "0",
           "--epochs", "1", "--results", str(res)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = list(res.rglob("result.json"))
    record = json.loads(result.read_text())
    assert record["config"]["runtime"]["mixed_precision"] == "bf16" and record["metrics"]["skipped_steps"] == 0


def test_two_processes_run_an_lfm_dr_experiment(tmp_path):
    """Two launched processes split every training batch; rank 0 alone writes and prints."""
    res = tmp_path / "results"
    proc = _launch_two("run", "table7", "--profile", "smoke", "--methods", "LFM-DR", "--noise", "flip",
                       "--seeds", "0", "--results", str(res))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (proc.stdout + proc.stderr).count("ran: LFM-DR") == 1  # one process printed
    results = list(res.rglob("result.json"))
    assert len(results) == 1
    record = json.loads(results[0].read_text())
    assert record["metrics"]["skipped_steps"] == 0 and record["metrics"]["b_mean"] != 1.0
    assert len((results[0].parent / "log.txt").read_text().splitlines()) == 2  # start + done, once
    assert not (results[0].parent / ".lock").exists()
    # a method without the gradient-averaging hook refuses, in one line, instead of diverging
    proc = _launch_two("run", "table7", "--profile", "smoke", "--methods", "Base Model", "--noise", "flip",
                       "--seeds", "0", "--results", str(tmp_path / "r2"))
    assert proc.returncode != 0 and "'ce' runs in one process" in proc.stderr  # torchrun reports exit 1
    assert "without torchrun or accelerate launch" in proc.stderr
    assert not list((tmp_path / "r2").rglob("result.json"))
