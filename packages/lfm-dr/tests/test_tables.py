"""A DR table's spec names what ran: its columns are parameters, and a noise type other than
the paper's changes the title, the headers and "What ran", and hides the paper's numbers."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from lfm_core.experiments import get_experiment
from lfm_core.paper import PaperValue, paper_table
from lfm_core.report import render_terminal
from lfm_core.runner import resolve_config


def records(name: str, noise: str | None) -> list[dict]:
    exp = get_experiment(name)
    options = {"rates": "0.4", "engine": "exact", **({"noise": noise} if noise else {})}
    out = []
    for cell in exp.cells("smoke", options):
        for seed, acc in ((0, 60.0), (1, 62.0)):
            config = resolve_config(exp, cell, "smoke", seed, options, device="cpu")
            out.append({**{k: config[k] for k in ("experiment", "profile", "row", "column", "params", "seed")},
                        "config": config, "config_id": config["config_id"], "metrics": {"test_acc": acc}})
    return out


def printed(name: str, noise: str | None) -> str:
    console = Console(file=io.StringIO(), force_terminal=False, width=400)
    render_terminal(get_experiment(name), records(name, noise), "smoke", console)
    return console.file.getvalue()


def test_pair_noise_is_named_and_shown_without_the_papers_flip_numbers():
    text = printed("table7", "pair")
    title = text.splitlines()[0]
    assert "under pair noise (paper: flip noise)" in title
    assert "CIFAR-10 pair 40% ours" in text and "CIFAR-10 40% ours" not in text
    assert "89.06" not in text and "70.77" not in text  # the paper's flip-noise numbers
    assert "pair noise (paper: flip noise)" in next(line for line in text.splitlines() if line.startswith("What ran"))


def test_the_papers_own_noise_keeps_the_papers_title_and_numbers():
    text = printed("table7", None)
    assert "under flip noise —" in text.splitlines()[0] and "(paper:" not in text.splitlines()[0]
    assert "CIFAR-10 40% ours" in text and "70.77 ± 2.31" in text
    assert "pair noise" not in text
    table8 = printed("table8", "flip")
    assert "under flip noise (paper: uniform noise)" in table8.splitlines()[0] and "53.12" not in table8


def test_columns_are_parameters_not_labels():
    table7, table6, figure6 = (get_experiment(n) for n in ("table7", "table6", "figure6"))
    spec = table7.column_spec("CIFAR-100 20%")
    assert (spec.data, spec.noise, spec.rate, spec.factor) == ("CIFAR-100", "flip", 0.2, None)
    assert get_experiment("table8").column_spec("CIFAR-10 0%").noise == "uniform"
    assert table6.column_spec("CIFAR-10 IF 200").factor == 200.0
    assert table6.standin_columns == ("CIFAR-10 IF 20", "CIFAR-10 IF 10", "CIFAR-10 IF 1")
    assert [c.params["factor"] for c in figure6.cells("cpu", {})] == [20.0, 20.0]  # the stand-in's factor
    assert [c.params["factor"] for c in figure6.cells("paper", {})] == [200.0, 200.0]
    assert get_experiment("ablation_dr").columns == ["CIFAR-10 flip 40%", "CIFAR-10 IF 20"]
    assert table7.method_of("Meta-Net") == "mwn" and "Reed-Hard" not in table7.run_rows("paper", {})


def test_every_table_declares_its_claims_and_seeds():
    assert [c.source for c in get_experiment("table7").claims] == ["Table VII"]
    assert [c.source for c in get_experiment("table8").claims] == ["Table VIII"]
    assert {x.experiment for c in get_experiment("figure6").claims for x in c.comparisons} == {"figure6", "table6"}
    assert get_experiment("table6").claims == () and get_experiment("ablation_dr").seeds["cpu"] == [0, 1, 2, 3, 4]


def test_the_paper_parser_checks_its_row_count():
    assert paper_table(["a", "b"], ["x", "y"], "1.5±0.1 -\n2 3") == {
        ("a", "x"): PaperValue(1.5, 0.1), ("b", "x"): PaperValue(2.0), ("b", "y"): PaperValue(3.0)}
    with pytest.raises(ValueError, match="1 lines of paper numbers for 2 rows"):
        paper_table(["a", "b"], ["x"], "1")
    with pytest.raises(ValueError, match="2 paper numbers for 1 columns"):
        paper_table(["a"], ["x"], "1 2")


def test_settings_are_typed_and_recorded_as_before():
    from lfm_core.errors import UsageError
    from lfm_dr.experiments import DRSettings

    exp = get_experiment("table7")
    cell = next(c for c in exp.cells("cpu", {"engine": "exact"}) if c.row == "LFM-DR" and c.column == "CIFAR-10 40%")
    settings = exp.settings(cell, "cpu", {"engine": "exact", "set": {"lr": 1, "meta_per_class": 3, "lr_b": 1}})
    assert settings.train.lr == 1.0 and isinstance(settings.train.lr, float) and settings.data.meta_per_class == 3
    assert settings.method_options["lr_b"] == 1.0 and isinstance(settings.method_options["lr_b"], float)
    assert (settings.train.momentum, settings.train.weight_decay, settings.train.milestones) == (0.9, 5e-4, (0.8, 0.9))
    record = exp.resolve(cell, "cpu", {"engine": "exact"})
    assert DRSettings.from_record(record).record() == record
    assert list(record) == ["data", "model", "train", "method"] and record["data"]["image_size"] == 16
    did_you_mean = r"unknown --set key 'lrr'. Did you mean 'lr_r' or 'lr'\? Valid choices: b_min, batch_size"
    with pytest.raises(UsageError, match=did_you_mean):
        exp.validate("cpu", {"set": {"lrr": 0.1}})
    with pytest.raises(UsageError, match=r"--set epochs='ten': expected int"):
        exp.validate("cpu", {"set": {"epochs": "ten"}})
