"""The report from a fixed set of run records written through the real config resolution:
only seeds of one configuration are averaged, labels say what ran, Δ only where comparable."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from lfm_core import load_results
from lfm_core.experiments import get_experiment
from lfm_core.io import atomic_write_json
from lfm_core.report import write_report
from lfm_core.runner import RESULT, resolve_config, run_dir_for

# (profile, row, engine, seed, test_acc): two configurations of LFM-DR in one cell
RUNS = [
    ("cpu", "Base Model", None, 0, 70.0), ("cpu", "Base Model", None, 1, 72.0),
    ("cpu", "LFM-DR", "exact", 0, 80.0), ("cpu", "LFM-DR", "exact", 1, 83.0), ("cpu", "LFM-DR", "exact", 2, 86.0),
    ("cpu", "LFM-DR", "forward-difference", 0, 70.0), ("cpu", "LFM-DR", "forward-difference", 1, 72.0),
]


def write_runs(root, runs, column="CIFAR-10 40%", options=None, experiment="table7"):
    exp = get_experiment(experiment)
    for profile, row, engine, seed, acc in runs:
        opts = {"engine": engine or "exact", **(options or {})}
        cell = next(c for c in exp.cells(profile, opts) if c.row == row and c.column == column)
        config = resolve_config(exp, cell, profile, seed, opts, device="cpu")
        record = {**{k: config[k] for k in ("experiment", "profile", "row", "column", "params", "seed")},
                  "config": config, "config_id": config["config_id"],
                  "metrics": {"test_acc": acc, "confusion": [[1, 0], [0, 1]]}, "wall_s": 1.0}
        atomic_write_json(run_dir_for(root, config) / RESULT, record)


def read_csv(path):
    frame = pd.read_csv(path)
    frame["variant"] = frame["variant"].fillna("")
    return frame


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    write_runs(root, RUNS)
    (root / "table7" / "cpu" / "broken" / "seed0").mkdir(parents=True)
    (root / "table7" / "cpu" / "broken" / "seed0" / RESULT).write_text('{"experiment": "table7", "met')
    (root / "table7" / "cpu" / "shape" / "seed0").mkdir(parents=True)
    (root / "table7" / "cpu" / "shape" / "seed0" / RESULT).write_text('[1, 2]')
    return root


@pytest.fixture(scope="module")
def report(results, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    write_report(results, out, ["table7"])
    return out


def test_configurations_are_never_averaged(report):
    df = read_csv(report / "table7.csv")
    cell = df[(df.column == "CIFAR-10 40%")].set_index(["row", "variant"])
    base = cell.loc[("Base Model", "")]
    # the spread is the sample std (n - 1), the one claims.md judges with
    assert base.ours_mean == pytest.approx(71.0) and base.ours_std == pytest.approx(2 ** 0.5) and base.seeds == 2
    exact = cell.loc[("LFM-DR", "engine=exact")]
    assert exact.ours_mean == pytest.approx(83.0) and exact.ours_std == pytest.approx(3.0) and exact.seeds == 3
    fwd = cell.loc[("LFM-DR", "engine=forward-difference")]
    assert fwd.ours_mean == pytest.approx(71.0) and fwd.seeds == 2
    assert 75.0 not in set(df.ours_mean.dropna())  # the mean of both engines appears nowhere
    assert exact.paper == 89.06 and exact.paper_std == 0.17
    assert exact.gain == pytest.approx(12.0) and exact.paper_gain == pytest.approx(89.06 - 70.77)
    assert df[(df.row == "LFM-DR") & (df.column == "CIFAR-10 20%")].status.tolist() == ["not run", "not run"]
    assert df[(df.row == "D2L") & (df.column == "CIFAR-10 40%")].status.item() == "cited"
    assert exact.dataset == "digits" and exact.profile == "cpu"


def test_stand_in_labels_and_no_delta(report):
    md = (report / "table7.md").read_text()
    assert "CIFAR-10 40% ours (on digits 16×16)" in md
    assert "stand-in for CIFAR-10" in md and "ResNet-8 width 8 (paper: ResNet-32 width 16)" in md
    assert "12 epochs (paper: 100)" in md
    assert "Δ" not in md.split("\n\n", 2)[2].split("\n\n")[0]  # no Δ column in the table
    assert "| LFM-DR [engine=exact] | not run | 92.85 ± 0.11 |" in md
    assert "| 83.00 ± 3.00 | 89.06 ± 0.17 | +12.00 / +18.29 |" in md
    assert "never averaged together" in md
    tex = (report / "table7.tex").read_text()
    assert r"83.00 $\pm$ 3.00" in tex and r"\bottomrule" in tex and r"CIFAR-10 40\%" in tex
    index = (report / "README.md").read_text()
    assert "[Markdown](table7.md)" in index and "2 of 78 cells run" in index


def test_delta_only_where_the_protocol_is_the_papers(tmp_path):
    write_runs(tmp_path, [("paper", "LFM-DR", "exact", 0, 88.0), ("paper", "LFM-DR", "exact", 1, 90.0)])
    write_report(tmp_path, tmp_path / "out", ["table7"])
    md = (tmp_path / "out" / "table7.md").read_text()
    assert "CIFAR-10 40% Δ" in md and "| 89.00 ± 1.41 | 89.06 ± 0.17 | -0.06 |" in md
    # the paper's protocol with a shorter budget is no longer comparable: no Δ for it
    write_runs(tmp_path, [("paper", "LFM-DR", "exact", 0, 50.0)], options={"epochs": 3})
    write_report(tmp_path, tmp_path / "out", ["table7"])
    df = read_csv(tmp_path / "out" / "table7.csv")
    lines = df[(df.row == "LFM-DR") & (df.column == "CIFAR-10 40%")]
    assert sorted(lines.seeds) == [1, 2] and lines["diff"].isna().sum() == 1
    assert math.isnan(lines[lines.seeds == 1]["diff"].item())


def test_load_results_has_one_row_per_run_and_every_config_field(results):
    frame = load_results(results)
    assert len(frame) == len(RUNS)
    for column in ("engine", "method", "dataset", "config_id", "seed", "settings.train.epochs",
                   "settings.method.options.lr_b", "runtime.device_type", "test_acc"):
        assert column in frame, column
    lfm = frame[frame.method == "lfm"]
    assert set(lfm.engine) == {"exact", "forward-difference"} and lfm.config_id.nunique() == 2
    assert frame[frame.method == "ce"].config_id.nunique() == 1  # CE does not depend on the engine
    assert set(frame["settings.train.epochs"]) == {12}


def test_report_where_selects_one_configuration(results, tmp_path):
    write_report(results, tmp_path, ["table7"], where={"engine": "forward-difference"})
    df = read_csv(tmp_path / "table7.csv")
    ran = df[df.status == "ok"]
    assert list(ran.row) == ["LFM-DR"] and ran.ours_mean.item() == pytest.approx(71.0)


def test_rank_agreement_is_per_stand_in(tmp_path):
    # the paper ranks Base Model < L2RW < Meta-Net < LFM-DR at 40% flip; digits agrees, photo patches reverses it
    rows = ("Base Model", "L2RW", "Meta-Net", "LFM-DR")
    write_runs(tmp_path, [("cpu", r, None, 0, acc) for r, acc in zip(rows, (70.0, 80.0, 85.0, 90.0))])
    write_runs(tmp_path, [("cpu", r, None, 0, acc) for r, acc in zip(rows, (90.0, 85.0, 80.0, 70.0))],
               options={"standin": "photo_patches"})
    write_report(tmp_path, tmp_path / "out", ["table7"])
    md = (tmp_path / "out" / "table7.md").read_text()
    assert "CIFAR-10 40%: +1.00 (digits), -1.00 (photo patches)" in md


def test_a_row_run_on_one_of_several_stand_ins_names_it(tmp_path):
    # Base Model ran on both stand-ins, L2RW on photo patches only: its line must say so too
    write_runs(tmp_path, [("cpu", "Base Model", None, 0, 70.0)])
    write_runs(tmp_path, [("cpu", r, None, 0, 60.0) for r in ("Base Model", "L2RW")],
               options={"standin": "photo_patches"})
    write_report(tmp_path, tmp_path / "out", ["table7"])
    md = (tmp_path / "out" / "table7.md").read_text()
    assert "| Base Model [dataset=digits] |" in md and "| Base Model [dataset=photo_patches] |" in md
    assert "| L2RW [dataset=photo_patches] |" in md
    write_runs(tmp_path / "one", [("cpu", r, None, 0, 60.0) for r in ("Base Model", "L2RW")])
    write_report(tmp_path / "one", tmp_path / "alone", ["table7"])  # one stand-in: no labels
    assert "[dataset=" not in (tmp_path / "alone" / "table7.md").read_text()


def test_a_figure_is_drawn_once_per_stand_in(tmp_path):
    # two stand-ins with the same seeds: one figure each, never one whose cells mix them
    for options in ({}, {"standin": "photo_patches"}):
        write_runs(tmp_path, [("cpu", r, None, 0, 50.0) for r in ("Base Model", "LFM-DR")],
                   column="CIFAR-10 IF 200", options=options, experiment="figure6")
    write_report(tmp_path, tmp_path / "out", ["figure6"])
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.png")) == ["figure6_digits.png", "figure6_photo_patches.png"]
    index = (out / "README.md").read_text()
    assert "(figure6_digits.png)" in index and "(figure6_photo_patches.png)" in index
