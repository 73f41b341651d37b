"""The paper's NAS tables (I-V, X) and figures (4-5) as registered experiments.

Every cell is one architecture search (:func:`lfm_nas.search.search`) followed by one
evaluation of the derived genotype trained from scratch (:func:`lfm_nas.search.train_eval`,
or :func:`lfm_nas.evaluation.train_eval_imagenet` for the ImageNet transfer columns). Each table
is a spec: rows (``row_specs``: method, encoder, variant), columns (``column_specs``: data set,
evaluation, measure), the paper's numbers; the profiles are data in :mod:`lfm_nas.profiles`.
What a run really does is resolved into its config (``resolve``) and read back from there.

A search or an evaluation with identical settings and seed is computed once per results root
and reused by every cell that needs it (:mod:`lfm_nas.cache`; e.g. table I's LFM-DARTS-2nd-R18
search serves table IV's TN+DARTS and table X's "no PS" row, as in the paper where these are the
same runs); ``--no-reuse`` turns that off.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import torch

from lfm_core.errors import DataNotFoundError
from lfm_core.experiments import Cell, Experiment, PaperValue, pv
from lfm_core.runtime import PeakMemory, cpu_threads
from lfm_nas.cache import SearchCache
from lfm_nas.evaluation import _device, _loader, _warm_up, load_bundle, search_split, train_eval_imagenet
from lfm_nas.genotypes import genotype_from_dict, genotype_to_dict, save_genotype
from lfm_nas.profiles import ENGINES, PROFILE_SETTINGS, has_cifar, imagenet_root, settings

# ------------------------------------------------------------------------------------
# profiles
# ------------------------------------------------------------------------------------
# ------------------------------------------------------------------------------------
# the shared experiment
# ------------------------------------------------------------------------------------
# what a row runs: method, LFM variant, encoder (None: no encoder), similarity, ablation
def spec(method: str, encoder: str | None = None, variant: str = "two", similarity: str = "dot",
         drop: str = "none") -> dict[str, Any]:
    out: dict[str, Any] = {"method": method}
    if method.startswith("lfm-"):
        out.update(variant=variant, encoder=None if variant == "ps" else encoder, similarity=similarity, drop=drop)
    return out


def _table(rows: list[str], columns: list[str], text: str) -> dict[tuple[str, str], PaperValue]:
    """The paper's numbers: one line per row (``-`` for a blank), one item per column."""
    values = {}
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if len(lines) != len(rows):
        raise ValueError(f"{len(lines)} lines of paper numbers for {len(rows)} rows")
    for row, line in zip(rows, lines):
        for column, item in zip(columns, line.split()):
            if item != "-":
                values[(row, column)] = pv(item)
    return values


class NASExperiment(Experiment):
    """Rows are search methods (``ROW_SPECS``), columns data sets or measures."""

    package = "lfm-nas"
    metric = "test_err"
    metric_label = "Test error (%)"
    higher_is_better = False
    seeds = {"smoke": [0], "cpu": [0, 1], "paper": [0, 1, 2]}
    row_specs: dict[str, dict[str, Any]] = {}
    smoke_rows: tuple[str, ...] | None = None  # None: every runnable row
    cpu_rows: tuple[str, ...] | None = None
    smoke_columns: tuple[str, ...] | None = None
    cpu_columns: tuple[str, ...] | None = None
    # column -> {"dataset": "cifar10" | "cifar100", "eval": "cifar" | "imagenet", "measure": ...}
    column_specs: dict[str, dict[str, Any]] = {}
    uses_imagenet = False

    # -- options ----------------------------------------------------------------------------
    def options(self) -> list[click.Option]:
        opts = [
            click.Option(["--engine"], type=click.Choice(ENGINES), default="auto", show_default=True,
                         help="Hypergradient engine of the LFM and DARTS-2nd searches; auto: exact for DARTS, "
                              "first-order for P-DARTS (as the official LFM-PDARTS code)."),
            click.Option(["--search-epochs"], type=click.IntRange(1), default=None,
                         help="Override the profile's search epochs (per stage for P-DARTS)."),
            click.Option(["--eval-epochs"], type=click.IntRange(1), default=None,
                         help="Override the profile's evaluation epochs."),
            click.Option(["--batch-size"], type=click.IntRange(2), default=None,
                         help="Override the profile's search batch size."),
            click.Option(["--reuse/--no-reuse"], default=True, show_default=True,
                         help="Reuse a search/evaluation with identical settings and seed found under --results."),
        ]
        if self.uses_imagenet:
            opts.append(click.Option(["--imagenet-root"], type=click.Path(file_okay=False), default=None,
                                     help="ImageNet folder with train/<class>/ and val/<class>/ (paper profile; "
                                          "default: DATA_ROOT/imagenet)."))
        return opts

    # -- grid -------------------------------------------------------------------------------
    def run_rows(self, profile: str) -> list[str]:
        rows = [r for r in self.rows if r in self.row_specs]
        chosen = {"smoke": self.smoke_rows, "cpu": self.cpu_rows}.get(profile)
        return [r for r in rows if chosen is None or r in chosen]

    def run_columns(self, profile: str) -> list[str]:
        cols = [c for c in self.columns if c in self.column_specs]
        chosen = {"smoke": self.smoke_columns, "cpu": self.cpu_columns}.get(profile)
        return [c for c in cols if chosen is None or c in chosen]

    def row_dataset(self, row: str, column: str) -> str:
        """The CIFAR the paper searched on for this cell."""
        return self.column_specs[column].get("dataset", "cifar100")

    def cells(self, profile, options):
        cells = []
        engine = options.get("engine") or "auto"
        for row in self.run_rows(profile):
            for column in self.run_columns(profile):
                cspec = self.column_specs[column]
                dataset = self.row_dataset(row, column)
                dataset = PROFILE_SETTINGS[profile]["search_dataset"] or dataset  # a stand-in, or the paper's
                params = {"dataset": dataset, **self.row_specs[row], "eval": cspec.get("eval", "cifar")}
                if self.row_specs[row]["method"] in ("darts2", "lfm-darts", "lfm-pdarts"):
                    params["engine"] = self.resolve_engine(self.row_specs[row]["method"], engine)
                if "measure" in cspec:
                    params["measure"] = cspec["measure"]
                cells.append(Cell(row, column, params))
        return cells

    @staticmethod
    def resolve_engine(method: str, engine: str) -> str:
        if engine != "auto":
            if method == "darts2" and engine == "first-order":
                return "exact"  # DARTS-2nd is second order by definition
            return engine
        return "first-order" if method == "lfm-pdarts" else "exact"

    # -- checks -----------------------------------------------------------------------------
    def validate(self, profile, options):
        if PROFILE_SETTINGS[profile]["search_dataset"]:  # embedded stand-in data: nothing to find
            return
        root = options.get("data_root")
        cells = self.cells(profile, options)
        for name in sorted({c.params["dataset"] for c in cells}):
            if name.startswith("cifar") and not has_cifar(root, name) and not options.get("download"):
                folder = "cifar-100-python" if name == "cifar100" else "cifar-10-batches-py"
                where = Path(root).expanduser() / folder if root else "(no --data-root given)"
                title = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[name]
                raise DataNotFoundError(
                    f"{self.name}'s paper profile needs {title}: looked for {where}. Point --data-root at "
                    f"a folder holding {folder}, or add --download."
                )
        if any(c.params.get("eval") == "imagenet" for c in cells):
            inet = imagenet_root(options)
            if inet is None or not (inet / "train").is_dir() or not ((inet / "val").is_dir() or (inet / "test").is_dir()):
                raise DataNotFoundError(
                    f"{self.name}'s paper profile needs ImageNet: looked for {inet or '(no --data-root given)'} "
                    "with train/<class>/ and val/<class>/ folders; pass --imagenet-root DIR."
                )
        encoders = sorted({c.params["encoder"] for c in cells if c.params.get("encoder")})
        if encoders:
            from lfm_core.encoders import PRETRAINED_TAG, cached_pretrained_file, hf_cache_dir

            for enc in encoders:
                if enc != "smallcnn" and cached_pretrained_file(f"{enc}.{PRETRAINED_TAG}") is None:
                    raise DataNotFoundError(
                        f"the paper profile uses an ImageNet-pretrained {enc} encoder: no {enc}.{PRETRAINED_TAG} "
                        f"weights in the Hugging Face cache {hf_cache_dir()}; on a machine with internet run "
                        f"`python -c \"import timm; timm.create_model('{enc}.{PRETRAINED_TAG}', pretrained=True)\"` "
                        "and copy the cache here (or set HF_HOME)."
                    )

    def describe(self, profile, options):
        if PROFILE_SETTINGS[profile]["search_dataset"] is None:
            return ("data: CIFAR-10/100 from --data-root (25k/25k search split), the paper's search and evaluation "
                    "protocol, ImageNet-pretrained ResNet encoders.")
        s = PROFILE_SETTINGS[profile]
        return (f"data: scikit-learn digits ({s['image_size']}x{s['image_size']}, embedded) stand in for CIFAR; "
                f"supernet C={s['C']}, {s['layers']} cells, {len(s['primitives'])} primitives; random-init encoders. "
                "For the paper's numbers: --profile paper --data-root DIR.")

    # -- one run ----------------------------------------------------------------------------
    def resolve(self, cell, profile, options):
        return {"settings": settings(profile, options)}

    def overrides(self, options):
        return {k: options[k] for k in ("search_epochs", "eval_epochs", "batch_size") if options.get(k)}

    def run_labels(self, config):
        s = (config.get("settings") or {}).get("settings") or {}
        if not s:
            return {}
        p = PROFILE_SETTINGS["paper"]
        params = config.get("params") or {}
        labels = {}
        if params.get("dataset") == "digits":
            size = s["image_size"]
            paper = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}.get(
                self.row_dataset(config["row"], config["column"]) if config["column"] in self.column_specs
                else "cifar100", "CIFAR")
            labels["data"] = f"digits {size}×{size} (stand-in for {paper})"
            if params.get("eval") == "imagenet":
                labels["data"] += f"; ImageNet stand-in: digits {s['imagenet_size']}×{s['imagenet_size']}"
        elif params.get("dataset"):
            labels["data"] = str(params["dataset"])
        prims = len(s["primitives"]) if s.get("primitives") else 8
        labels["model"] = (f"supernet C={s['C']}, {s['layers']} cells, {prims} primitives; evaluation network "
                           f"C={s['eval_C']}, {s['eval_layers']} cells")
        if (s["C"], s["layers"], s["eval_C"], s["eval_layers"]) != (p["C"], p["layers"], p["eval_C"], p["eval_layers"]):
            labels["model"] += (f" (paper: C={p['C']}, {p['layers']} cells, 8 primitives; C={p['eval_C']}, "
                                f"{p['eval_layers']} cells)")
        labels["budget"] = f"{s['search_epochs']} search epochs, {s['eval_epochs']} evaluation epochs"
        if (s["search_epochs"], s["eval_epochs"]) != (p["search_epochs"], p["eval_epochs"]):
            labels["budget"] += f" (paper: {p['search_epochs']} / {p['eval_epochs']})"
        return labels

    def search_config(self, params: dict[str, Any], s: dict[str, Any], seed: int, num_classes: int) -> dict[str, Any]:
        from lfm_nas.operations import PRIMITIVES

        method = params["method"]
        prims = tuple(s["primitives"] or PRIMITIVES)
        cfg: dict[str, Any] = {"method": method, "C": s["C"], "layers": s["layers"], "primitives": prims,
                               "num_classes": num_classes, "seed": int(seed),
                               "steps_per_epoch": s["steps_per_epoch"]}
        if method.endswith("pdarts"):
            ops = (len(prims),) + tuple(s["pdarts_ops"][1:])
            cfg.update(pdarts_layers=tuple(s["pdarts_layers"]), pdarts_ops=ops,
                       pdarts_skip_dropout=tuple(s["pdarts_skip_dropout"]), lfm_start=s["pdarts_lfm_start"])
        if "engine" in params:
            cfg["engine"] = params["engine"]
        if method.startswith("lfm-"):
            cfg.update(variant=params["variant"], similarity=params["similarity"], drop=params["drop"])
            if params.get("encoder"):
                cfg.update(encoder=params["encoder"], encoder_kwargs={"pretrained": bool(s["pretrained"])})
        return cfg

    def run_search(self, params, profile, seed, ctx, s, device) -> dict[str, Any]:
        from lfm_nas.search import search

        name = params["dataset"]
        bundle = load_bundle(name, profile, ctx, augment=name.startswith("cifar"))
        tr, va = search_split(bundle, seed, s["search_pool"])
        bs = s["batch_size"]
        train_loader = _loader(tr, bs, True, seed, drop_last=True, device=device)
        val_loader = _loader(va, bs, True, seed + 1, drop_last=True, device=device)
        cfg = self.search_config(params, s, seed, bundle.num_classes)
        if ctx.mixed_precision not in (None, "no"):
            cfg["mixed_precision"] = ctx.mixed_precision
        epochs = s["pdarts_epochs"] if params["method"].endswith("pdarts") else s["search_epochs"]
        label = f"search {params['method']}"

        def log(record):
            ctx.log_metrics({"phase": "search", **record})

        _warm_up(cfg, tr, va, device)
        start = time.perf_counter()
        with PeakMemory(device) as mem:
            result = search(cfg, train_loader, val_loader, epochs, device=device, log=log,
                            progress=lambda done, total: ctx.progress(done, total, label))
        wall = time.perf_counter() - start
        times = [h["time_s"] for h in result["history"] if "time_s" in h]
        peak = mem.peak_mb if mem.peak_mb is not None else float(result["peak_mem_mb"])
        out = {
            "genotype": genotype_to_dict(result["genotype"]),
            "peak_mem_mb": peak,
            "peak_mem_source": ("cuda max_memory_allocated" if device.type == "cuda"
                                else "growth of peak RSS" if mem.peak_mb is not None else "search()"),
            "search_epoch_s": float(result["epoch_time_s"]),
            "search_s": float(sum(times)) if times else wall,
            "search_wall_s": wall,
            "search_epochs": len(times),
            "search_val_acc": float(result["val_acc"]),
            "n_search_train": len(tr),
            "n_search_val": len(va),
            "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        }
        if "val_acc_w1" in result:
            out["search_val_acc_w1"] = float(result["val_acc_w1"])
        if "r" in result:
            r = result["r"].float()
            out["r_mean"], out["r_std"] = float(r.mean()), float(r.std()) if r.numel() > 1 else 0.0
        out["nonfinite_steps"] = int(result.get("nonfinite_steps", 0))
        return out

    def run_eval(self, genotype, params, profile, seed, ctx, s, device) -> dict[str, Any]:
        from lfm_nas.search import train_eval

        def log(record):
            ctx.log_metrics({"phase": "eval", **record})

        if params.get("eval") == "imagenet":
            if s["search_dataset"] is None:  # the paper's ImageNet
                from lfm_core.data import load_dataset

                opts = ctx.config.get("options", {})
                root = imagenet_root({**opts, "data_root": ctx.data_root})
                bundle = load_dataset("imagefolder", root=str(root), image_size=s["imagenet_size"])
            else:
                bundle = load_bundle("digits", profile, ctx, image_size=s["imagenet_size"])
            train = _loader(bundle.train, s["imagenet_batch"], True, seed, device=device)
            test = _loader(bundle.test, 256, False, seed, device=device)
            res = train_eval_imagenet(genotype, train, test, s["imagenet_epochs"], C=s["imagenet_C"],
                                      layers=s["imagenet_layers"], num_classes=bundle.num_classes,
                                      lr=s["imagenet_lr"], device=device, seed=seed, log=log,
                                      progress=lambda d, t: ctx.progress(d, t, "evaluate (ImageNet network)"))
            return {**res, "test_err": res["top1_err"], "eval_dataset": bundle.name,
                    "eval_network": f"NetworkImageNet(C={s['imagenet_C']}, layers={s['imagenet_layers']})"}
        name = params["dataset"]
        bundle = load_bundle(name, profile, ctx, augment=name.startswith("cifar"))
        train = _loader(bundle.train, s["eval_batch"], True, seed, device=device)
        test = _loader(bundle.test, 256, False, seed, device=device)
        res = train_eval(genotype, train, test, s["eval_epochs"], C=s["eval_C"], layers=s["eval_layers"],
                         auxiliary_weight=s["auxiliary"], drop_path=s["drop_path"], cutout=s["cutout"],
                         lr=s["eval_lr"], device=device, num_classes=bundle.num_classes, seed=seed, log=log,
                         progress=lambda d, t: ctx.progress(d, t, "evaluate"))
        return {"test_err": float(res["test_err"]), "test_acc": float(res["test_acc"]),
                "eval_epoch_s": float(res["epoch_time_s"]), "eval_dataset": bundle.name,
                "eval_network": f"NetworkCIFAR(C={s['eval_C']}, layers={s['eval_layers']})"}

    def needs_eval(self, params: dict[str, Any]) -> bool:
        return params.get("measure") in (None, "error", "top1", "top5")

    def run_cell(self, cell, profile, seed, ctx):
        device = _device(ctx)
        with cpu_threads(device, profile):
            metrics = self._run_cell(cell, profile, seed, ctx, device)
        metrics["threads"] = torch.get_num_threads() if device.type == "cpu" else None
        return metrics

    def _run_cell(self, cell, profile, seed, ctx, device):
        opts = ctx.config.get("options", {}) or {}
        s = ctx.config["settings"]["settings"]
        params = cell.params
        cache = SearchCache(ctx, profile, enabled=opts.get("reuse", True) is not False)
        search_params = {k: v for k, v in params.items() if k not in ("eval", "measure")}
        search_keys = ("image_size", "search_pool", "batch_size", "search_epochs", "steps_per_epoch", "C",
                       "layers", "primitives", "pdarts_layers", "pdarts_ops", "pdarts_epochs", "pdarts_lfm_start",
                       "pdarts_skip_dropout", "pretrained")
        skey = {"params": search_params, "settings": {k: s[k] for k in search_keys}, "seed": int(seed),
                "device": device.type}
        if ctx.mixed_precision not in (None, "no"):  # (absent otherwise: earlier caches stay valid)
            skey["mixed_precision"] = ctx.mixed_precision
        found = cache.get("search", skey)
        if found is None:
            found = cache.put("search", skey, self.run_search(params, profile, seed, ctx, s, device))
        genotype = genotype_from_dict(found["genotype"])
        save_genotype(genotype, Path(ctx.run_dir) / "genotype.json")
        metrics: dict[str, Any] = {k: v for k, v in found.items() if k not in ("key", "producer", "genotype")}
        metrics["genotype"] = json.dumps(genotype_to_dict(genotype))
        metrics["search_gpu_days"] = metrics["search_s"] / 86400.0
        if found["producer"] != str(ctx.run_dir):
            metrics["search_from"] = found["producer"]
        if self.needs_eval(params):
            eval_keys = [k for k in s if k.startswith(("eval_", "imagenet_"))] + ["cutout", "auxiliary", "drop_path"]
            ekey = {"genotype": found["genotype"], "eval": params.get("eval", "cifar"),
                    "dataset": params["dataset"], "settings": {k: s[k] for k in sorted(eval_keys)},
                    "seed": int(seed), "device": device.type}
            ev = cache.get("eval", ekey)
            if ev is None:
                ev = cache.put("eval", ekey, self.run_eval(genotype, params, profile, seed, ctx, s, device))
            metrics.update({k: v for k, v in ev.items() if k not in ("key", "producer")})
            if ev["producer"] != str(ctx.run_dir):
                metrics["eval_from"] = ev["producer"]
        ctx.log(f"genotype: {metrics['genotype']}")
        return self.finish_metrics(cell, metrics)

    def finish_metrics(self, cell: Cell, metrics: dict[str, Any]) -> dict[str, Any]:
        return metrics


# ------------------------------------------------------------------------------------
# Tables I and II: CIFAR-100 / CIFAR-10 test error
# ------------------------------------------------------------------------------------
BASE_SPECS = {
    "DARTS-2nd": spec("darts2"),
    "LFM-DARTS-2nd-R18": spec("lfm-darts", "resnet18"),
    "PDARTS": spec("pdarts"),
    "LFM-PDARTS-R18": spec("lfm-pdarts", "resnet18"),
    "LFM-PDARTS-R34": spec("lfm-pdarts", "resnet34"),
}

T1_ROWS = ["ResNet", "DenseNet", "PNAS", "ENAS", "AmoebaNet", "GDAS", "R-DARTS", "DARTS-", "DARTS+", "DropNAS",
           "Random search", "Random sampling", "DARTS-2nd", "LFM-DARTS-2nd-R18", "PDARTS", "LFM-PDARTS-R18",
           "LFM-PDARTS-R34"]


class Table1(NASExperiment):
    """CIFAR-100 test error of DARTS-2nd, P-DARTS and their LFM versions (ResNet-18/34 encoders)."""

    name = "table1"
    title = "Test error (%) on CIFAR-100"
    rows = T1_ROWS
    columns = ["CIFAR-100"]
    row_specs = BASE_SPECS
    column_specs = {"CIFAR-100": {"dataset": "cifar100"}}
    cited_rows = tuple(r for r in T1_ROWS if r not in BASE_SPECS)
    paper = _table(T1_ROWS, ["CIFAR-100"], """
22.10
17.18
19.53
19.43
18.93
18.38
18.01±0.26
17.51±0.25
17.11±0.43
16.39
21.92±0.34
21.37±0.48
20.58±0.44
17.65±0.45
17.49
16.44±0.11
15.69±0.15
""")


T2_ROWS = ["DenseNet", "HierEvol", "PNAS", "ENAS", "NASNet-A", "AmoebaNet-B", "R-DARTS", "GTN", "BayesNAS",
           "MergeNAS", "NoisyDARTS", "ASAP", "SDARTS", "DropNAS", "DrNAS", "Random search", "Random sampling",
           "DARTS-2nd", "LFM-DARTS-2nd-R18", "PDARTS", "LFM-PDARTS-R18"]


class Table2(NASExperiment):
    """CIFAR-10 test error of DARTS-2nd, P-DARTS and their LFM versions (ResNet-18 encoder)."""

    name = "table2"
    title = "Test error (%) on CIFAR-10"
    rows = T2_ROWS
    columns = ["CIFAR-10"]
    row_specs = {k: v for k, v in BASE_SPECS.items() if k != "LFM-PDARTS-R34"}
    column_specs = {"CIFAR-10": {"dataset": "cifar10"}}
    cited_rows = tuple(r for r in T2_ROWS if r not in BASE_SPECS)
    paper = _table(T2_ROWS, ["CIFAR-10"], """
3.46
3.75±0.12
3.41±0.09
2.89±0.13
2.65±0.05
2.55±0.05
2.95±0.21
2.92±0.06
2.81±0.04
2.73±0.02
2.70±0.23
2.68±0.11
2.61±0.02
2.58±0.14
2.54±0.03
3.07±0.17
2.75±0.09
2.76±0.09
2.70±0.06
2.50
2.46±0.04
""")


# ------------------------------------------------------------------------------------
# Table III: ImageNet transfer
# ------------------------------------------------------------------------------------
T3_ROWS = ["Inception-v1", "MobileNet", "ShuffleNet 2x (v1)", "ShuffleNet 2x (v2)", "NASNet-A", "PNAS",
           "MnasNet-92", "AmoebaNet-C", "SNAS-CIFAR10", "PARSEC-CIFAR10", "DSNAS-ImageNet", "SDARTS-ADV-CIFAR10",
           "FairDARTS-ImageNet", "DrNAS-ImageNet", "ProxlessNAS-ImageNet", "GDAS-CIFAR10", "DARTS2nd-CIFAR10",
           "LFM-DARTS-2nd-CIFAR10", "PDARTS (CIFAR10)", "LFM-PDARTS-CIFAR10", "PDARTS (CIFAR100)",
           "LFM-PDARTS-CIFAR100"]
T3_COLS = ["Top-1 Error (%)", "Top-5 Error (%)"]
T3_SPECS = {
    "DARTS2nd-CIFAR10": spec("darts2"),
    "LFM-DARTS-2nd-CIFAR10": spec("lfm-darts", "resnet18"),
    "PDARTS (CIFAR10)": spec("pdarts"),
    "LFM-PDARTS-CIFAR10": spec("lfm-pdarts", "resnet18"),
    "PDARTS (CIFAR100)": spec("pdarts"),
    "LFM-PDARTS-CIFAR100": spec("lfm-pdarts", "resnet18"),
}


class Table3(NASExperiment):
    """ImageNet top-1/top-5 error of cells searched on CIFAR-10/100 (DARTS-2nd, P-DARTS, LFM).

    cpu/smoke: a stand-in transfer evaluation: the searched cell in the ImageNet network (its
    3-convolution stem) trained and tested on digits at twice the search resolution. On digits
    (10 classes) top-5 error is close to 0; only the paper profile measures ImageNet.
    """

    name = "table3"
    title = "Test error (%) on ImageNet (top-1 / top-5)"
    rows = T3_ROWS
    columns = T3_COLS
    row_specs = T3_SPECS
    column_specs = {"Top-1 Error (%)": {"eval": "imagenet", "measure": "top1"},
                    "Top-5 Error (%)": {"eval": "imagenet", "measure": "top5"}}
    cited_rows = tuple(r for r in T3_ROWS if r not in T3_SPECS)
    # on digits the CIFAR-10 and CIFAR-100 searches are the same search: run the CIFAR-10 rows
    cpu_rows = ("DARTS2nd-CIFAR10", "LFM-DARTS-2nd-CIFAR10", "PDARTS (CIFAR10)", "LFM-PDARTS-CIFAR10")
    smoke_rows = ("DARTS2nd-CIFAR10", "LFM-DARTS-2nd-CIFAR10")
    uses_imagenet = True
    paper = _table(T3_ROWS, T3_COLS, """
30.2 10.1
29.4 10.5
26.4 10.2
25.1 7.6
26.0 8.4
25.8 8.1
25.2 8.0
24.3 7.6
27.3 9.2
26.0 8.4
25.7 8.1
25.2 7.8
24.4 7.4
24.2 7.3
24.9 7.5
26.0 8.5
26.7 8.7
25.1 7.6
24.4 7.4
24.1 6.8
24.7 7.5
24.1 6.7
""")

    def row_dataset(self, row, column):
        return "cifar100" if "CIFAR100" in row else "cifar10"

    def finish_metrics(self, cell, metrics):
        metrics["test_err"] = metrics["top5_err"] if cell.params.get("measure") == "top5" else metrics["top1_err"]
        return metrics

    def describe(self, profile, options):
        if PROFILE_SETTINGS[profile]["search_dataset"] is None:
            return ("data: cells searched on CIFAR-10/100 from --data-root, evaluated on ImageNet from --imagenet-root "
                    "(14 cells, C=48, 250 epochs).")
        return (super().describe(profile, options) + " ImageNet stand-in: the searched cell in the ImageNet network "
                "on digits at 2x resolution (top-5 error is near 0 with 10 classes).")


# ------------------------------------------------------------------------------------
# Table IV: single network vs two networks
# ------------------------------------------------------------------------------------
class Table4(NASExperiment):
    """Single network (W2 := W1) vs two networks, LFM-DARTS-2nd and LFM-PDARTS, CIFAR-100."""

    name = "table4"
    title = "Test error (%) of single network (SN) and two networks (TN) on CIFAR-100"
    rows = ["SN+DARTS", "TN+DARTS", "SN+PDARTS", "TN+PDARTS"]
    columns = ["CIFAR-100"]
    row_specs = {
        "SN+DARTS": spec("lfm-darts", "resnet18", variant="single"),
        "TN+DARTS": spec("lfm-darts", "resnet18", variant="two"),
        "SN+PDARTS": spec("lfm-pdarts", "resnet18", variant="single"),
        "TN+PDARTS": spec("lfm-pdarts", "resnet18", variant="two"),
    }
    column_specs = {"CIFAR-100": {"dataset": "cifar100"}}
    smoke_rows = ("SN+DARTS", "TN+DARTS")
    paper = _table(rows, columns, """
19.28±0.31
17.65±0.45
17.37±0.23
16.44±0.11
""")


# ------------------------------------------------------------------------------------
# Table V: encoder size
# ------------------------------------------------------------------------------------
T5_ROWS = ["LFM-PDARTS-R18", "LFM-PDARTS-R101", "LFM-PDARTS-R152"]
T5_COLS = ["CIFAR-100", "ImageNet"]


class Table5(NASExperiment):
    """LFM-PDARTS with ResNet-18/101/152 encoders: searched on CIFAR-100, evaluated on CIFAR-100 and ImageNet."""

    name = "table5"
    title = "Test error (%) on CIFAR-100 and ImageNet with different sizes of image encoder"
    rows = T5_ROWS
    columns = T5_COLS
    row_specs = {r: spec("lfm-pdarts", "resnet" + r.rsplit("-R", 1)[1]) for r in T5_ROWS}
    column_specs = {"CIFAR-100": {"dataset": "cifar100", "eval": "cifar"},
                    "ImageNet": {"dataset": "cifar100", "eval": "imagenet"}}
    smoke_columns = ("CIFAR-100",)
    uses_imagenet = True
    paper = _table(T5_ROWS, T5_COLS, """
16.44 24.10
15.45 23.52
14.88 23.02
""")

    def describe(self, profile, options):
        if PROFILE_SETTINGS[profile]["search_dataset"] is None:
            return ("data: LFM-PDARTS searched on CIFAR-100 from --data-root, evaluated on CIFAR-100 and on ImageNet "
                    "from --imagenet-root.")
        return (super().describe(profile, options) + " ImageNet column: the searched cell in the ImageNet network "
                "on digits at 2x resolution (a stand-in).")


# ------------------------------------------------------------------------------------
# Table X: memory and cost with and without parameter sharing
# ------------------------------------------------------------------------------------
T10_ROWS = ["LFM+DARTS, no PS", "LFM+DARTS+PS", "DARTS", "LFM+PDARTS, no PS", "LFM+PDARTS+PS", "PDARTS"]
T10_COLS = ["Error (%)", "Memory (MiB)", "Search cost (GPU-days)", "Search time (s/epoch)"]
MEASURE_KEY = {"error": "test_err", "memory": "peak_mem_mb", "cost": "search_gpu_days", "epoch": "search_epoch_s"}


class Table10(NASExperiment):
    """Test error, peak search memory and search cost with and without parameter sharing (CIFAR-100).

    Each row is one search (and one evaluation for the error column); the memory and time columns
    are measured from that search: CUDA ``max_memory_allocated``, or on CPU the growth of the
    process's peak resident set during the search; the cost is the search's device time in days
    (GPU-days on a GPU, CPU-days of this machine otherwise), the last column its mean seconds per
    epoch (the paper prints no such column). The table's ``value`` is the column's quantity.
    """

    name = "table10"
    title = "Test error (%), memory (MiB) and search cost (GPU-days) with and without parameter sharing, CIFAR-100"
    metric = "value"
    metric_label = "Error (%), peak search memory (MiB), search cost (device-days), search time (s/epoch)"
    rows = T10_ROWS
    columns = T10_COLS
    row_specs = {
        "LFM+DARTS, no PS": spec("lfm-darts", "resnet18", variant="two"),
        "LFM+DARTS+PS": spec("lfm-darts", variant="ps"),
        "DARTS": spec("darts2"),
        "LFM+PDARTS, no PS": spec("lfm-pdarts", "resnet18", variant="two"),
        "LFM+PDARTS+PS": spec("lfm-pdarts", variant="ps"),
        "PDARTS": spec("pdarts"),
    }
    column_specs = {
        "Error (%)": {"dataset": "cifar100", "measure": "error"},
        "Memory (MiB)": {"dataset": "cifar100", "measure": "memory"},
        "Search cost (GPU-days)": {"dataset": "cifar100", "measure": "cost"},
        "Search time (s/epoch)": {"dataset": "cifar100", "measure": "epoch"},
    }
    smoke_rows = ("LFM+DARTS, no PS", "LFM+DARTS+PS", "DARTS")
    paper = _table(T10_ROWS, T10_COLS, """
17.65±0.45 23702 5.4 -
18.77±0.31 12138 1.6 -
20.58±0.44 11053 1.5 -
16.44±0.11 20744 2.0 -
16.83±0.08 10582 0.3 -
17.49 9659 0.3 -
""")

    def finish_metrics(self, cell, metrics):
        metrics["search_cpu_hours"] = metrics["search_s"] / 3600.0
        key = MEASURE_KEY[cell.params["measure"]]
        if key == "search_gpu_days" and str(metrics.get("device", "")).startswith("cpu"):
            key = "search_cpu_hours"  # a CPU search is not GPU time: hours of this machine's CPU
        metrics["value"] = float(metrics[key])
        metrics["value_unit"] = key
        return metrics

    def column_label(self, column, configs):
        if column == "Search cost (GPU-days)" and configs and all(
                (c.get("runtime") or {}).get("device_type") == "cpu" for c in configs):
            return "Search cost (CPU-hours; paper: GPU-days)"
        return column


# ------------------------------------------------------------------------------------
# Figures 4 and 5: ablations of a_i and of the similarity
# ------------------------------------------------------------------------------------
FIG_COLS = ["LFM-DARTS-2nd", "LFM-PDARTS"]


class _AblationFigure(NASExperiment):
    kind = "figure"
    columns = FIG_COLS
    column_specs = {c: {"dataset": "cifar100"} for c in FIG_COLS}
    smoke_columns = ("LFM-DARTS-2nd",)
    cpu_columns = ("LFM-DARTS-2nd",)
    paper = {}  # the figures' bar heights are not printed in the paper
    row_args: dict[str, dict[str, Any]] = {}

    def cells(self, profile, options):
        engine = options.get("engine") or "auto"
        cells = []
        for row in self.rows:
            for column in self.run_columns(profile):
                method = "lfm-darts" if column == "LFM-DARTS-2nd" else "lfm-pdarts"
                dataset = PROFILE_SETTINGS[profile]["search_dataset"] or "cifar100"
                params = {"dataset": dataset, **spec(method, "resnet18", **self.row_args[row]), "eval": "cifar",
                          "engine": self.resolve_engine(method, engine)}
                cells.append(Cell(row, column, params))
        return cells

    def plot(self, frame, out_path):
        from lfm_nas.figures import plot_bars

        plot_bars(frame, out_path, self.rows, self.columns, self.title, self.metric, self.metric_label)


class Figure4(_AblationFigure):
    """Ablation of the three terms of a_i (x: visual similarity, u: W1's mistakes, z: label agreement).

    Each ablated term is replaced by ones; LFM with a ResNet-18 encoder on CIFAR-100. The paper
    draws the bars without printing their values, so there are no paper numbers to compare.
    """

    name = "figure4"
    title = "Ablation on the components of a_i (CIFAR-100, ResNet-18 encoder)"
    rows = ["w/o x", "w/o u", "w/o z", "Full"]
    row_args = {"w/o x": {"drop": "x"}, "w/o u": {"drop": "u"}, "w/o z": {"drop": "z"}, "Full": {}}


class Figure5(_AblationFigure):
    """Visual similarity in a_i: dot-product attention vs cosine similarity vs negative L2 distance.

    The paper draws the bars without printing their values.
    """

    name = "figure5"
    title = "Visual similarity metrics in LFM (CIFAR-100, ResNet-18 encoder)"
    rows = ["Dot product", "Cosine similarity", "L2 distance"]
    row_args = {"Dot product": {"similarity": "dot"}, "Cosine similarity": {"similarity": "cosine"},
                "L2 distance": {"similarity": "l2"}}
