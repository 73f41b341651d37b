"""`lfm-bench run EXP --plan`: runs, finished runs, steps per run and device-hours (lfm_core.plan)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from lfm_core.data import load_dataset, make_splits
from lfm_core.experiments import get_experiment
from lfm_core.io import atomic_write_json
from lfm_core.plan import CE_MULTIPLES, device_costs, dr_train_size, plan_table, run_steps
from lfm_core.runner import RECORD_KEYS, resolve_config, run_dir_for

CLI = [sys.executable, "-m", "lfm_core.cli"]


@pytest.fixture
def fake_cifar(tmp_path) -> Path:
    """A data root that passes the paper profile's CIFAR check (nothing is read to plan)."""
    root = tmp_path / "data"
    for folder in ("cifar-10-batches-py", "cifar-100-python"):
        (root / folder).mkdir(parents=True)
    return root


def configs_of(name: str, profile: str, seeds: list[int], data_root: Path | None = None):
    exp = get_experiment(name)
    root = str(data_root) if data_root else None
    cells = exp.cells(profile, {"data_root": root})
    return exp, [resolve_config(exp, c, profile, s, {}, data_root=root) for c in cells for s in seeds]


def finish(results: Path, config: dict, metric: str) -> None:
    record = {**{k: config[k] for k in RECORD_KEYS}, "config": config, "config_id": config["config_id"],
              "metrics": {metric: 50.0}, "wall_s": 1.0, "env": {}}
    run_dir = run_dir_for(results, config)
    run_dir.mkdir(parents=True)
    atomic_write_json(run_dir / "result.json", record)


def test_table7_paper_plan_counts_runs_minus_finished_and_prices_the_rest(fake_cifar, tmp_path):
    exp, configs = configs_of("table7", "paper", [0, 1], fake_cifar)
    results = tmp_path / "results"
    lfm = [c for c in configs if c["settings"]["method"]["name"] == "lfm"]
    finish(results, configs[0], exp.metric)
    finish(results, configs[1], exp.metric)
    finish(results, lfm[0], exp.metric)
    stale = dict(lfm[1], settings={**lfm[1]["settings"], "train": {**lfm[1]["settings"]["train"], "epochs": 1}})
    finish(results, {**stale, "config_id": lfm[1]["config_id"]}, exp.metric)  # another config: not finished
    costs = device_costs("cuda-h200")
    plan = plan_table(exp, configs, results, costs)

    assert plan.runs == len(configs) == 9 * 6 * 2  # 9 methods x 6 columns x 2 seeds
    assert plan.finished == 3
    # CIFAR-10 and CIFAR-100 both leave 49,000 training examples after the 1,000-example meta set:
    # 100 epochs of 490 full batches of 100
    assert {c["settings"]["train"]["epochs"] for c in configs} == {100}
    ce = costs.steps["dr/resnet32/ce"]
    for row in plan.rows:
        method = next(c["settings"]["method"]["name"] for c in configs if c["row"] == row.row)
        step_s = {"lfm": costs.steps["dr/resnet32/lfm"], "lfm_plus": costs.steps["dr/resnet32/lfm"]}.get(method)
        step_s = step_s if step_s is not None else CE_MULTIPLES[method] * ce
        done = {"Base Model": 2, "LFM-DR": 1}.get(row.row, 0)
        assert (row.runs, row.finished) == (12, done), row
        assert row.hours == pytest.approx((12 - done) * 49_000 * step_s / 3600)
    assert plan.hours == pytest.approx(sum(r.hours for r in plan.rows))


def test_train_size_matches_the_splits_the_runs_build():
    # long-tailed digits (the cpu profile's stand-in): the planned size is the one make_splits builds
    _, configs = configs_of("table6", "cpu", [0])
    bundle = load_dataset("digits", image_size=configs[0]["settings"]["data"]["image_size"])
    for config in configs[:: max(1, len(configs) // 4)]:
        data = config["settings"]["data"]
        splits = make_splits(bundle, meta_per_class=data["meta_per_class"], seed=0, noise=data["noise"],
                             noise_rate=data["rate"], imbalance=data["imbalance"], imbalance_factor=data["factor"],
                             max_train=data["max_train"])
        assert dr_train_size(data) == splits.info["n_train"], config["column"]


def test_nas_runs_count_search_and_evaluation_steps():
    _, configs = configs_of("table1", "paper", [0])
    by_method = {c["params"]["method"]: run_steps(c) for c in configs}
    # DARTS: 50 epochs over the 25k search-train half in batches of 64; P-DARTS: 3 stages of 25 epochs;
    # evaluation: 600 epochs of CIFAR's 50k in batches of 96
    assert by_method["darts2"]["nas/search/darts2"][1] == 50 * (25_000 // 64)
    pdarts = next(m for m in by_method if m.endswith("pdarts"))
    assert by_method[pdarts][f"nas/search/{pdarts}"][1] == 3 * 25 * (25_000 // 64)
    assert by_method["darts2"]["nas/eval/cifar"][1] == 600 * -(-50_000 // 96)


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=env)


def test_cli_plan_prints_the_table_and_runs_nothing(fake_cifar, tmp_path):
    results = tmp_path / "results"
    proc = run("run", "table7", "--profile", "paper", "--data-root", str(fake_cifar), "--seeds", "0",
               "--results", str(results), "--plan", "--plan-device", "cuda-h200")
    assert proc.returncode == 0, proc.stderr
    total = next(line for line in proc.stdout.splitlines() if line.strip().startswith("total"))
    assert total.split()[1:3] == ["54", "0"], total
    assert "LFM-DR" in proc.stdout and "156.6 ms" in proc.stdout
    assert not results.exists()


@pytest.mark.parametrize("args, words", [
    (["--plan", "--plan-device", "h100"], ["'h100'", "cpu, cuda-h200"]),
    (["--plan-device", "cuda-h200"], ["--plan-device cuda-h200 needs --plan"]),
])
def test_cli_bad_plan_device_is_one_line(args, words, tmp_path):
    proc = run("run", "table7", "--results", str(tmp_path / "r"), *args)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and all(w in lines[0] for w in words), proc.stderr


def test_plan_without_a_device_name_times_each_method_once_and_prices_with_it(tmp_path):
    from lfm_core.plan import measure_costs

    exp, configs = configs_of("table7", "smoke", [0, 1])
    configs = [c for c in configs if c["column"] == configs[0]["column"]]
    costs = measure_costs(exp, configs, repeats=1, device="cpu")
    methods = {c["settings"]["method"]["name"] for c in configs}
    assert {k.split("/")[2] for k in costs.steps} == methods and all(v > 0 for v in costs.steps.values())
    plan = plan_table(exp, configs, tmp_path / "results", costs)
    for row in plan.rows:
        config = next(c for c in configs if c["row"] == row.row)
        (key, (_, steps)), = run_steps(config).items()
        assert row.hours == pytest.approx(row.runs * steps * costs.steps[key] / 3600)
    # an experiment without a step timer (the NAS ones) is planned with unknown step times
    nas, nas_configs = configs_of("table1", "smoke", [0])
    unknown = plan_table(nas, nas_configs, tmp_path / "results", measure_costs(nas, nas_configs, device="cpu"))
    assert unknown.hours is None and all(r.hours is None for r in unknown.rows)
