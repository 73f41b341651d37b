"""The NAS experiments: the paper's numbers as printed, grids, data checks, one smoke run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lfm_core.data import STANDIN_TITLES, STANDINS
from lfm_core.errors import DataNotFoundError
from lfm_core.experiments import PaperValue, has_cifar
from lfm_core.runner import RESULT, resolve_config, run_dir_for, run_one
from lfm_nas import experiments as E
from lfm_nas.cache import SearchCache
from lfm_nas.profiles import PROFILES
from lfm_nas.genotypes import DARTS_V2, genotype_to_dict, load_genotype

ALL = [E.Table1, E.Table2, E.Table3, E.Table4, E.Table5, E.Table10, E.Figure4, E.Figure5]


def test_paper_numbers_as_printed():
    assert E.Table1.paper[("LFM-PDARTS-R34", "CIFAR-100")] == PaperValue(15.69, 0.15)
    assert E.Table1.paper[("DARTS-2nd", "CIFAR-100")] == PaperValue(20.58, 0.44)
    assert E.Table1.paper[("PDARTS", "CIFAR-100")] == PaperValue(17.49, None)
    assert E.Table1.paper[("ResNet", "CIFAR-100")] == PaperValue(22.10, None)
    assert E.Table2.paper[("LFM-PDARTS-R18", "CIFAR-10")] == PaperValue(2.46, 0.04)
    assert E.Table2.paper[("HierEvol", "CIFAR-10")] == PaperValue(3.75, 0.12)
    assert E.Table3.paper[("LFM-PDARTS-CIFAR100", "Top-5 Error (%)")] == PaperValue(6.7)
    assert E.Table3.paper[("Inception-v1", "Top-1 Error (%)")] == PaperValue(30.2)
    assert E.Table4.paper[("SN+DARTS", "CIFAR-100")] == PaperValue(19.28, 0.31)
    assert E.Table5.paper[("LFM-PDARTS-R152", "ImageNet")] == PaperValue(23.02)
    mem = {r: E.Table10.paper[(r, "Memory (MiB)")].value for r in E.Table10.rows}
    assert mem == {"LFM+DARTS, no PS": 23702, "LFM+DARTS+PS": 12138, "DARTS": 11053,
                   "LFM+PDARTS, no PS": 20744, "LFM+PDARTS+PS": 10582, "PDARTS": 9659}
    assert E.Table10.paper[("LFM+DARTS, no PS", "Search cost (GPU-days)")] == PaperValue(5.4)
    assert E.Table10.paper[("LFM+PDARTS+PS", "Error (%)")] == PaperValue(16.83, 0.08)
    assert ("DARTS", "Search time (s/epoch)") not in E.Table10.paper  # the paper prints no such column
    assert E.Figure4.paper == {} and E.Figure5.paper == {}  # bar heights are not printed


def test_nas_tables_declare_the_papers_claims_about_them():
    """Each claim lives on the spec of the table it is about, naming that spec's own rows."""
    sources = {cls.name: [c.source for c in cls.claims] for cls in ALL}
    assert sources == {"table1": ["Tables I-III"], "table2": [], "table3": [], "table4": ["Table IV"], "table5": [],
                       "table10": ["Table X"], "figure4": ["Fig. 4"], "figure5": ["Fig. 5"]}
    by_name = {cls.name: cls for cls in ALL}
    for cls in ALL:
        for claim in cls.claims:
            for comparison in claim.comparisons:
                spec = by_name[comparison.experiment]
                assert {comparison.better, comparison.worse} <= set(spec.rows) - set(spec.cited_rows)
                assert set(comparison.columns) <= set(spec.columns)


@pytest.mark.parametrize("cls", ALL)
def test_grid_per_profile(cls):
    exp = cls()
    assert exp.rows and exp.columns and exp.metric in ("test_err", "value") and not exp.higher_is_better
    for row in exp.cited_rows:
        assert row in exp.rows and row not in exp.row_specs and (row, exp.columns[0]) in exp.paper
    for (row, column) in exp.paper:
        assert row in exp.rows and column in exp.columns
    for profile in ("smoke", "cpu", "paper"):
        cells = exp.cells(profile, {})
        assert cells, (cls.name, profile)
        assert exp.run_rows(profile) == exp.run_rows(profile, {"engine": "exact"})  # DR's (profile, options)
        slugs = [c.slug() for c in cells]
        assert len(set(slugs)) == len(slugs)  # one run directory per cell
        assert all(c.row in exp.rows and c.column in exp.columns for c in cells)
        if profile != "paper":
            assert {c.params["dataset"] for c in cells} == {PROFILES[profile].data}
        assert exp.seeds[profile]


@pytest.mark.parametrize("cls", ALL)
def test_every_spec_resolves_on_every_standin(cls):
    pytest.importorskip("skimage", reason="photo_patches needs lfm-core[patches] (scikit-image)")
    """``--standin`` picks the embedded data of the cpu/smoke profiles for every cell (the ImageNet
    stand-in too); naming the profile's default changes no run identity, another stand-in makes
    new runs, and every run's data label names the stand-in. The paper profile ignores it."""
    exp = cls()
    for profile in ("smoke", "cpu", "paper"):
        plain = {(c.row, c.column): resolve_config(exp, c, profile, 0, {}, device="cpu")["config_id"]
                 for c in exp.cells(profile, {})}
        for standin in STANDINS:
            options = {"standin": standin}
            if profile != "paper":  # the paper profile's validate wants CIFAR on disk
                exp.validate(profile, options)
            cells = exp.cells(profile, options)
            assert [(c.row, c.column) for c in cells] == list(plain)
            for cell in cells:
                config = resolve_config(exp, cell, profile, 0, options, device="cpu")
                same = config["config_id"] == plain[(cell.row, cell.column)]
                if profile == "paper":
                    assert same and cell.params["dataset"].startswith("cifar")
                    continue
                assert cell.params["dataset"] == config["settings"]["settings"]["search_dataset"] == standin
                assert same == (standin == PROFILES[profile].data), (cls.name, profile, standin, cell.row,
                                                                    cell.column)
                label = exp.run_labels(config)["data"]
                assert label.startswith(STANDIN_TITLES[standin]) and "stand-in" in label
                if cell.params.get("eval") == "imagenet":
                    assert f"ImageNet stand-in: {STANDIN_TITLES[standin]}" in label
            if profile != "paper":
                assert {"digits": "digits", "photo_patches": "photos"}[standin] in exp.describe(profile, options)


def test_standin_errors(monkeypatch):
    from lfm_core.errors import UsageError

    with pytest.raises(UsageError, match="--standin.*'cifar'.*digits, photo_patches"):
        E.Table1().cells("cpu", {"standin": "cifar"})
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skimage" else find_spec(name, *a))
    with pytest.raises(DataNotFoundError, match=r"pip install 'lfm-core\[patches\]'"):
        E.Table1().validate("cpu", {"standin": "photo_patches"})
    E.Table1().validate("cpu", {"standin": "digits"})


def test_printed_table_names_its_standin(tmp_path):
    pytest.importorskip("skimage", reason="photo_patches needs lfm-core[patches] (scikit-image)")
    """A photo_patches run's table says so, in its column header and its "What ran" line."""
    import io

    from rich.console import Console

    from lfm_core.report import render_terminal

    exp = E.Table10()
    options = {"standin": "photo_patches"}
    cell = next(c for c in exp.cells("smoke", options) if c.row == "DARTS" and c.params["measure"] == "memory")
    rec, _ = run_one(exp, cell, "smoke", 0, tmp_path, options=options)
    assert rec["config"]["params"]["dataset"] == "photo_patches"
    out = io.StringIO()
    render_terminal(exp, [rec], "smoke", Console(file=out, force_terminal=False))
    text = out.getvalue()
    assert "ours (on photo patches 8×8)" in text
    assert "What ran: data: photo patches 8×8 (stand-in for CIFAR-100)" in text


def test_shared_searches_have_one_key():
    """Table I's LFM-DARTS-2nd-R18, table IV's TN+DARTS and figure 4's full model are one search."""
    def params(exp, row):
        cell = next(c for c in exp.cells("cpu", {}) if c.row == row)
        return {k: v for k, v in cell.params.items() if k not in ("eval", "measure")}

    assert params(E.Table1(), "LFM-DARTS-2nd-R18") == params(E.Table4(), "TN+DARTS") == params(E.Figure4(), "Full")
    assert params(E.Table10(), "LFM+DARTS, no PS") == params(E.Table1(), "LFM-DARTS-2nd-R18")
    assert params(E.Table1(), "LFM-PDARTS-R18")["engine"] == "first-order"  # the official LFM-PDARTS
    assert E.Table1().cells("cpu", {"engine": "finite-difference"})[1].params["engine"] == "finite-difference"


@pytest.mark.parametrize("cls", ALL)
def test_paper_profile_without_data(cls, tmp_path):
    exp = cls()
    with pytest.raises(DataNotFoundError) as info:
        exp.validate("paper", {"data_root": tmp_path})
    assert "cifar-10" in str(info.value) and str(tmp_path) in str(info.value)
    with pytest.raises(DataNotFoundError, match="no --data-root"):
        exp.validate("paper", {"data_root": None})
    exp.validate("smoke", {"data_root": None})  # digits: nothing needed


@pytest.mark.parametrize("at_folder", [False, True])
def test_cifar_is_found_in_a_data_root_or_as_its_folder(tmp_path, at_folder):
    """``--data-root`` may hold cifar-100-python or be it, as the loader accepts (lfm_core's has_cifar)."""
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    root = folder if at_folder else tmp_path
    assert has_cifar(root, "cifar100") and not has_cifar(root, "cifar10")
    assert not has_cifar(tmp_path / "cifar-10-batches-py", "cifar10")  # the folder's name alone is not enough
    E.Table1().validate("paper", {"data_root": root, "set": {"pretrained": False}})


def test_imagenet_is_checked(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-100-python").mkdir()
    with pytest.raises(DataNotFoundError, match="ImageNet"):
        E.Table3().validate("paper", {"data_root": tmp_path})


class _Ctx:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.lines: list[str] = []

    def log(self, text):
        self.lines.append(text)


def test_cache_reuse_rules(tmp_path):
    a = tmp_path / "res" / "table1" / "cpu" / "cellA" / "seed0"
    b = tmp_path / "res" / "table4" / "cpu" / "cellB" / "seed0"
    for d in (a, b):
        d.mkdir(parents=True)
        (d / "log.txt").write_text("[00:00:00] start x\n")
    key = {"params": {"method": "darts2"}, "seed": 0}
    found = {"genotype": genotype_to_dict(DARTS_V2), "search_s": 1.0, "search_epoch_s": 0.5}
    SearchCache(_Ctx(a), "cpu", True).put("search", key, found)
    assert SearchCache(_Ctx(b), "cpu", True).get("search", key)["search_s"] == 1.0  # another cell: reused
    assert SearchCache(_Ctx(b), "cpu", False).get("search", key) is None  # --no-reuse
    assert SearchCache(_Ctx(a), "cpu", True).get("search", key) is None  # own entry, fresh/forced run: recompute
    (a / "log.txt").write_text("[00:00:00] start x\n[00:01:00] start x\n")
    assert SearchCache(_Ctx(a), "cpu", True).get("search", key)["search_s"] == 1.0  # own entry, resumed run
    assert SearchCache(_Ctx(b), "cpu", True).get("search", {**key, "seed": 1}) is None
    # an entry missing a field the cells read (or not an object at all) is computed again, never read
    path = SearchCache(_Ctx(a), "cpu", True).path("search", key)
    for broken in ({**json.loads(path.read_text()), "genotype": {"normal": []}}, [1, 2], None):
        path.write_text(json.dumps(broken))
        assert SearchCache(_Ctx(a), "cpu", True).get("search", key) is None
        assert SearchCache(_Ctx(b), "cpu", True).get("search", key) is None
    path.write_bytes(b"\xff\xfe random bytes")
    assert SearchCache(_Ctx(b), "cpu", True).get("search", key) is None


def test_smoke_run_end_to_end(tmp_path):
    exp = E.Table10()
    cells = [c for c in exp.cells("smoke", {}) if c.row == "DARTS"]
    error = next(c for c in cells if c.params["measure"] == "error")
    memory = next(c for c in cells if c.params["measure"] == "memory")
    rec, computed = run_one(exp, error, "smoke", 0, tmp_path, options={})
    assert computed
    run_dir = Path(rec["run_dir"]) if "run_dir" in rec else run_dir_for(tmp_path, rec["config"])
    saved = json.loads((run_dir / RESULT).read_text())
    m = saved["metrics"]
    assert 0 <= m["test_err"] <= 100 and m["value"] == m["test_err"]
    assert m["search_epoch_s"] > 0 and m["peak_mem_mb"] >= 0 and "genotype" in m
    geno = load_genotype(run_dir / "genotype.json")
    assert json.loads(m["genotype"])["normal"] == [list(p) for p in geno.normal]
    assert len(geno.normal) == 8 and len(geno.reduce) == 8
    phases = {json.loads(line)["phase"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()}
    assert phases == {"search", "eval"}
    # the memory column reuses the error column's search (no second search, no evaluation)
    rec2, computed2 = run_one(exp, memory, "smoke", 0, tmp_path, options={})
    m2 = rec2["metrics"]
    assert computed2 and m2["search_from"] == str(run_dir) and m2["value"] == m["peak_mem_mb"]
    assert "test_err" not in m2 or m2["test_err"] == m["test_err"]
    assert rec2["wall_s"] < 5
    # --no-reuse: the cost column searches again (the option reaches the run, not its identity)
    cost = next(c for c in cells if c.params["measure"] == "cost")
    rec3, _ = run_one(exp, cost, "smoke", 0, tmp_path, options={"reuse": False})
    assert "search_from" not in rec3["metrics"] and rec3["metrics"]["genotype"] == m["genotype"]


def test_plot_bars(tmp_path):
    import pandas as pd

    frame = pd.DataFrame([
        {"experiment": "figure4", "profile": "smoke", "row": r, "column": "LFM-DARTS-2nd", "seed": s,
         "dataset": "digits", "test_err": 10.0 + i + s}
        for i, r in enumerate(E.Figure4.rows) for s in (0, 1)
    ])
    out = tmp_path / "figure4.png"
    E.Figure4().plot(frame, out)
    assert out.exists() and out.stat().st_size > 1000


def test_bench_step_costs_keys():
    import statistics
    import time

    from lfm_nas.bench import nas_step_costs

    def time_fn(fn, device, warmup, repeat):
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    out = nas_step_costs("cpu", 2, 0, 1, time_fn, lambda fn, device: (fn(), 1.0)[1], encoder="smallcnn", C=4,
                         layers=3, image_size=8)
    for key in ("darts_step_s", "lfm_step_s", "ps_step_s", "ratio", "ps_ratio", "darts_mem_mb", "lfm_mem_mb",
                "ps_mem_mb", "mem_ratio", "ps_mem_ratio"):
        assert isinstance(out[key], float) and out[key] >= 0, key
    assert "C=4" in out["setup"] and out["ratio"] == out["lfm_step_s"] / out["darts_step_s"]
