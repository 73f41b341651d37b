"""Golden test: a report built from a fixed, committed set of tiny run records."""

from pathlib import Path

import pandas as pd
import pytest

from lfm_core.report import write_report

GOLDEN = Path(__file__).parent / "data" / "golden_results"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    write_report(GOLDEN, out, ["table7"])
    return out


def test_values_std_and_marks(report):
    df = pd.read_csv(report / "table7.csv").set_index(["row", "column"])
    base = df.loc[("Base Model", "CIFAR-10 40%")]
    assert base.ours_mean == pytest.approx(71.0) and base.ours_std == pytest.approx(1.0) and base.seeds == 2
    lfm = df.loc[("LFM-DR", "CIFAR-10 40%")]
    assert lfm.ours_mean == pytest.approx(83.0) and lfm.ours_std == pytest.approx(2.449489743) and lfm.seeds == 3
    assert lfm.paper == 89.06 and lfm.paper_std == 0.17 and lfm["diff"] == pytest.approx(83.0 - 89.06)
    assert df.loc[("LFM-DR", "CIFAR-10 20%")].status == "not run"
    assert df.loc[("D2L", "CIFAR-10 40%")].status == "cited"
    assert df.loc[("D2L", "CIFAR-10 40%")].paper == 83.89
    assert len(df) == 12 * 6 and lfm.dataset == "digits" and lfm.profile == "cpu"


def test_markdown_and_latex(report):
    md = (report / "table7.md").read_text()
    assert "| LFM-DR | not run | 92.85 ± 0.11 |  |" in md
    assert "83.00 ± 2.45 | 89.06 ± 0.17 | -6.06 |" in md
    assert "71.00 ± 1.00 | 70.77 ± 2.31 | +0.23 |" in md
    tex = (report / "table7.tex").read_text()
    assert r"83.00 $\pm$ 2.45" in tex and r"\bottomrule" in tex and "CIFAR-10 40\\%" in tex
    index = (report / "README.md").read_text()
    assert "[Markdown](table7.md)" in index and "2 of 72 cells run" in index
