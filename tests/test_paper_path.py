"""The ``paper`` profile of every experiment, end to end on disk data in the real formats.

A session fixture writes CIFAR-10/100 (python-pickle batches), an ANIMAL-10N folder, an
ImageNet-style train/val folder and a timm resnet18 state dict (tests/paper_fixture.py); each
experiment then runs ``lfm-bench run EXP --profile paper --data-root ... --encoder-weights FILE``
on a cell or two with tiny budgets, and ``lfm-bench report`` renders every table and figure. Only
the budget is scaled down (epochs, training images, batch sizes; for NAS also the supernet and
evaluation network sizes, which are that profile's cost): the loaders, the pretrained-encoder
path, the ImageNet evaluation and the report are the paper profile's own. The NAS runs share one
results root, so a search or evaluation another cell already made is reused (as on a real run).
"""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

import paper_fixture as fx
from lfm_core.cli import main
from lfm_core.data import IMAGE_EXTENSIONS

LAUNCH = ["--launcher", "local", "--jobs", "2"]  # the paper path as a user runs a table: worker processes
DEVICE = ["--device", "cpu"]  # (a GPU machine may set ["--device", "cuda"])

DR_BUDGET = ["--seeds", "0", "--set", "epochs=1", "--set", "max_train=10", "--set", "batch_size=10",
             "--set", "meta_batch_size=10"]
NAS_BUDGET = ["--seeds", "0", "--search-epochs", "1", "--eval-epochs", "1", "--set", "steps_per_epoch=1",
              "--set", "batch_size=16", "--set", "C=4", "--set", "layers=3", "--set", "pdarts_layers=[3,3,4]",
              "--set", "eval_C=4", "--set", "eval_layers=3", "--set", "eval_batch=64", "--set", "imagenet_C=4",
              "--set", "imagenet_layers=3", "--set", "imagenet_batch=8",
              "--set", 'primitives=["none","max_pool_3x3","skip_connect","sep_conv_3x3"]', "--set", "pdarts_ops=[4,3,2]"]

# experiment -> (data root: "dr" | "animal" | "nas", the cells to run, whether it takes --encoder-weights)
DR_RUNS = {
    "table6": ("dr", ["--methods", "LFM-DR", "--only", "CIFAR-10 IF 200"], True),
    "table7": ("dr", ["--methods", "LFM-DR,LFM-DR+ (ours)", "--rates", "0.4", "--only", "CIFAR-100"], True),
    "table8": ("dr", ["--methods", "Base Model", "--rates", "0.2", "--only", "CIFAR-10 20%"], True),
    "table9": ("animal", ["--methods", "LFM"], True),
    "figure6": ("dr", [], True),
    "figure7": ("dr", ["--rates", "0.4", "--only", "ResNet-32"], True),
    "figure8": ("dr", ["--rates", "0.4", "--only", "ResNet-32 Base"], True),
    "ablation_dr": ("dr", ["--methods", "LFM-DR (paper)", "--only", "flip"], False),  # its encoders are its rows'
}
NAS_RUNS = {
    "table1": ("nas", ["--only", "LFM-DARTS-2nd-R18"], True),  # LFM-DARTS, exact hypergradient, resnet18 from FILE
    "table2": ("nas", ["--only", "LFM-PDARTS-R18"], True),  # LFM-PDARTS on CIFAR-10
    "table3": ("nas", ["--only", "LFM-PDARTS-CIFAR10"], True),  # (and -CIFAR100) searches, evaluated on ImageNet
    "table4": ("nas", ["--only", "TN+DARTS"], True),  # table1's search and evaluation, reused
    "table5": ("nas", ["--only", "LFM-PDARTS-R18"], True),  # CIFAR-100 and ImageNet evaluations of one search
    "table10": ("nas", ["--only", "LFM+DARTS, no PS"], True),  # table1's search: error, memory and cost columns
    "figure4": ("nas", ["--only", "Full"], True),  # tables 1 and 5's searches
    "figure5": ("nas", ["--only", "Dot product"], True),
}
RUNS = {**DR_RUNS, **NAS_RUNS}


@pytest.fixture(scope="session")
def paper_data(tmp_path_factory) -> dict[str, Path]:
    """Data roots in the paper profile's formats, a resnet18 weights file and a shared results root."""
    base = tmp_path_factory.mktemp("paper")
    dr, nas = base / "data", base / "nas_data"
    # DR: CIFAR-10 holds the meta set (100 per class under noise) plus an IF-200 long tail; CIFAR-100 10 + 2
    fx.write_cifar10(dr, train_per_class=215, test_per_class=2)
    fx.write_cifar100(dr, train_per_class=12, test_per_class=1)
    fx.write_animal10n(base / "animal10n", train_per_class=102, test_per_class=2)  # meta set: 100 per class
    # NAS evaluates on the whole training set: a smaller copy, with ImageNet where --imagenet-root defaults
    fx.write_cifar10(nas, train_per_class=6, test_per_class=2)
    fx.write_cifar100(nas, train_per_class=1, test_per_class=1)
    fx.write_imagenet(nas / "imagenet", classes=3, train_per_class=4, val_per_class=2)
    weights = fx.write_resnet18_weights(base / "resnet18.pth")
    return {"dr": dr, "animal": base / "animal10n", "nas": nas, "weights": weights, "results": base / "results",
            "reports": base / "reports"}


def lfm_bench(*args: str) -> None:
    """``lfm-bench ARGS`` in this process; exits with an error fail the test."""
    old = signal.getsignal(signal.SIGTERM)  # `run` installs its own SIGTERM handler
    try:
        main(list(args))
    except SystemExit as exc:
        if exc.code not in (0, None):
            pytest.fail(f"lfm-bench {' '.join(args)} exited with {exc.code}")
    finally:
        signal.signal(signal.SIGTERM, old)


def results_of(results: Path, experiment: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / experiment / "paper").glob("*/seed*/result.json"))]


def run_paper(name: str, data: dict[str, Path]) -> list[dict]:
    root, cells, takes_weights = RUNS[name]
    budget = NAS_BUDGET if name in NAS_RUNS else DR_BUDGET
    weights = ["--encoder-weights", str(data["weights"])] if takes_weights else []
    lfm_bench("run", name, "--profile", "paper", "--data-root", str(data[root]), "--results", str(data["results"]),
              *DEVICE, *budget, *weights, *cells, *LAUNCH)
    return results_of(data["results"], name)


def test_cifar_reader_matches_torchvision(paper_data, monkeypatch):
    """Our pickle reader gives torchvision's arrays; torchvision itself refuses the files (md5)."""
    import torchvision.datasets.cifar as tvc

    from lfm_core.data import load_dataset

    with pytest.raises(RuntimeError, match="corrupted"):
        tvc.CIFAR10(str(paper_data["dr"]), train=True)
    monkeypatch.setattr(tvc, "check_integrity", lambda *a, **k: True)  # only for the comparison below
    for name, cls in (("cifar10", tvc.CIFAR10), ("cifar100", tvc.CIFAR100)):
        bundle = load_dataset(name, root=str(paper_data["dr"]))
        for split, ours in ((True, bundle.train), (False, bundle.test)):
            ref = cls(str(paper_data["dr"]), train=split)
            mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in
                         {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
                          "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}[name])
            expect = torch.from_numpy(ref.data).permute(0, 3, 1, 2).float().div(255).sub(mean).div(std)
            assert torch.equal(ours.images, expect)
            assert ours.labels.tolist() == list(ref.targets)
        assert bundle.classes == ref.classes


def test_cifar_reader_names_a_broken_file(tmp_path):
    from lfm_core.data import load_dataset
    from lfm_core.errors import DataNotFoundError

    folder = fx.write_cifar10(tmp_path, train_per_class=2, test_per_class=1)
    (folder / "data_batch_3").write_bytes((folder / "data_batch_3").read_bytes()[:100])  # truncated
    with pytest.raises(DataNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", root=str(tmp_path))
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataNotFoundError, match="data_batch_3 is missing"):
        load_dataset("cifar10", root=str(tmp_path))


@pytest.mark.parametrize("name", list(RUNS))
def test_paper_profile_runs(name, paper_data):
    records = run_paper(name, paper_data)
    assert records, f"{name}: no result.json"
    root = RUNS[name][0]
    for rec in records:
        config = rec["config"]
        assert config["profile"] == "paper" and rec["seed"] == 0
        assert config["runtime"]["data_root"] == str(paper_data[root].resolve())
        value = rec["metrics"]["value" if name == "table10" else "test_acc" if name in DR_RUNS else "test_err"]
        assert math.isfinite(value)
        settings = config["settings"]
        if name in NAS_RUNS:
            assert rec["params"]["dataset"] in ("cifar10", "cifar100")
            if rec["params"].get("encoder"):  # the file, not the Hugging Face cache
                assert settings["encoder_weights"]["path"] == str(paper_data["weights"].resolve())
            if rec["params"].get("eval") == "imagenet" and rec["metrics"].get("eval_dataset"):
                assert rec["metrics"]["eval_dataset"] == "imagefolder"
                assert settings["imagenet_root"] == str((paper_data["nas"] / "imagenet").resolve())
        else:
            assert settings["train"]["epochs"] == 1 and settings["data"]["max_train"] == 10
            opts = settings["method"]["options"]
            if rec["params"]["method"] in ("lfm", "lfm_plus") and name != "ablation_dr":
                # LFM-DR+ picks pixels or resnet18 per run from the meta set (encoder="auto")
                assert opts["encoder"] == ("auto" if rec["params"]["method"] == "lfm_plus" else "resnet18")
                assert opts["encoder_weights"]["path"] == str(paper_data["weights"].resolve())
    if name == "table3":  # both columns read one ImageNet evaluation of each search
        assert {r["metrics"]["eval_dataset"] for r in records} == {"imagefolder"}


def test_paper_profile_report(paper_data):
    missing = [n for n in RUNS if not results_of(paper_data["results"], n)]
    for name in missing:  # run alone (e.g. -k report): make the results first
        run_paper(name, paper_data)
    out = paper_data["reports"]
    lfm_bench("report", *RUNS, "--results", str(paper_data["results"]), "--out", str(out))
    for name in RUNS:
        text = (out / f"{name}.md").read_text()
        assert "What ran:" in text and "(profile paper)" in text, name
        assert "stand-in" not in text.lower() and "needs CIFAR" not in text, name  # nothing here is a stand-in
        assert "Columns run with overrides of the paper's protocol" in text, name  # (so no Δ to the paper)
        if name in NAS_RUNS:
            assert "1 search epochs, 1 evaluation epochs (paper: 50 / 600)" in text, name
            assert "supernet C=4, 3 cells, 4 primitives" in text, name
            assert "(paper: C=16, 8 cells, 8 primitives; C=36, 20 cells)" in text, name
        else:
            assert "1 epochs (paper: 100)" in text and "10 training images (paper: all)" in text, name
        if RUNS[name][2] and name not in ("table8", "figure8"):  # cells with an LFM encoder
            assert "resnet18, weights from resnet18.pth" in text, name
        if name in ("figure4", "figure5", "figure6", "figure7", "figure8", "ablation_dr"):
            assert (out / f"{name}.png").stat().st_size > 0
    assert "imagefolder" in (out / "table9.md").read_text()
    assert "ImageNet 224×224 from" in (out / "table3.md").read_text()
    assert np.isfinite(json.loads(next((paper_data["results"] / "table3" / "paper").glob("*/seed0/result.json"))
                                  .read_text())["metrics"]["top5_err"])


def lfm_bench_error(capsys, *args: str) -> str:
    """The one-line error of a failing ``lfm-bench ARGS``."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return " ".join(err.split())


def test_encoder_weights_are_checked_first(paper_data, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))  # no cached weights whatever the machine has
    base = ["run", "table5", "--profile", "paper", "--data-root", str(paper_data["nas"]), "--print-config"]
    err = lfm_bench_error(capsys, *base, "--only", "R101")
    assert "resnet101.tv_in1k" in err and "--encoder-weights resnet101=FILE" in err
    err = lfm_bench_error(capsys, *base, "--only", "R18")  # --only: the R101/R152 rows are not checked
    assert "resnet18.tv_in1k" in err and "--encoder-weights FILE" in err
    err = lfm_bench_error(capsys, *base, "--only", "R18", "--encoder-weights", "resnet1O1=w.pth")
    assert "unknown encoder 'resnet1O1'" in err and "resnet101" in err
    err = lfm_bench_error(capsys, *base, "--only", "R18", "--encoder-weights", str(tmp_path / "none.pth"))
    assert "none.pth is not a file" in err
    weights = str(paper_data["weights"])
    err = lfm_bench_error(capsys, *base, "--encoder-weights", weights, "--encoder-weights", f"resnet18={weights}")
    assert "given twice for resnet18" in err
    dr = ["run", "table7", "--profile", "paper", "--data-root", str(paper_data["dr"]), "--print-config"]
    err = lfm_bench_error(capsys, *dr, "--methods", "Base Model,LFM-DR")  # DR too: before Base Model runs
    assert "LFM-DR uses an ImageNet-pretrained resnet18" in err and "--encoder-weights FILE" in err
    capsys.readouterr()
    main([*base, "--only", "R18", "--seeds", "0", "--encoder-weights", weights])
    configs = json.loads(capsys.readouterr().out)
    assert len(configs) == 2 and all(c["settings"]["encoder_weights"]["path"] == str(paper_data["weights"].resolve())
                                     for c in configs)


def test_imagenet_root_is_read_at_run_time(paper_data, tmp_path, capsys):
    """--imagenet-root elsewhere is the folder the evaluation reads (here one whose val/ is empty)."""
    import shutil

    other = tmp_path / "inet"
    shutil.copytree(paper_data["nas"] / "imagenet" / "train", other / "train")
    (other / "val").mkdir()
    err = lfm_bench_error(capsys, "run", "table3", "--profile", "paper", "--data-root", str(paper_data["nas"]),
                          "--results", str(paper_data["results"]), "--imagenet-root", str(other), "--encoder-weights",
                          str(paper_data["weights"]), *DEVICE, *NAS_BUDGET, "--only", "LFM-PDARTS-CIFAR10", *LAUNCH)
    assert f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {other / 'val'}" in err
