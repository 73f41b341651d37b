"""The experiment every NAS table and figure shares: a cell is one architecture search
(:func:`lfm_nas.search.search`), then one evaluation of the derived genotype trained from scratch
(:func:`lfm_nas.search.train_eval`, or :func:`lfm_nas.evaluation.train_eval_imagenet` for the
ImageNet transfer columns), both cached per results root (:mod:`lfm_nas.cache`). Settings come
from the run's recorded config (``resolve``: the profile in :mod:`lfm_nas.profiles` after the
command-line overrides)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import torch

from lfm_core.data import CIFAR_FOLDERS, CIFAR_TITLES, STANDIN_TITLES, STANDINS
from lfm_core.encoders import encoder_label
from lfm_core.errors import CheckpointError, DataNotFoundError, UsageError
from lfm_core.experiments import Cell, Experiment, has_cifar, selected
from lfm_core.identity import file_digest
from lfm_core.runtime import PeakMemory, cpu_threads
from lfm_nas.cache import SearchCache, _key_hash, eval_key, search_key
from lfm_nas.evaluation import _device, _loader, _warm_up, load_bundle, search_split, train_eval_imagenet
from lfm_nas.genotypes import genotype_from_dict, genotype_to_dict, save_genotype
from lfm_nas.profiles import ENGINES, PROFILES, EvalSettings, SearchSettings, imagenet_root, set_values, settings


def _drop_eval_records(ctx) -> None:
    """Before an evaluation starts over: metrics.jsonl keeps the search's records only."""
    records = ctx.metrics
    keep = next((i for i, r in enumerate(records) if r.get("phase") == "eval"), len(records))
    if keep < len(records):
        ctx.truncate_metrics(keep)


class _PhaseCheckpoint:
    """A phase's position in its run directory's checkpoint (the ``checkpoint=`` of
    :func:`~lfm_nas.search.search` or :func:`~lfm_nas.search.train_eval`), tagged with the phase
    and its cache key; loading it truncates metrics.jsonl to the records it covers, and one
    saved by another phase or run is refused."""

    phase = label = ""

    def __init__(self, ctx, key: dict[str, Any]):
        self.ctx, self.key = ctx, _key_hash(key)

    def where(self, state: dict[str, Any]) -> str:
        return f"epoch {state.get('epoch')} step {state.get('step')}"

    def done_with(self, saved: dict[str, Any]) -> bool:
        """Whether ``saved`` is a finished phase's leftover, to be ignored."""
        return False

    def start(self) -> None:
        """Nothing saved: the phase starts over."""

    def load(self) -> dict[str, Any] | None:
        saved = self.ctx.load_checkpoint()
        if saved is None or self.done_with(saved):
            self.start()
            return None
        if not isinstance(saved.get(self.phase), dict) or saved.get("key") != self.key:
            raise CheckpointError(f"checkpoint {self.ctx.checkpoint_path} is not this {self.label}'s "
                                  "(delete it or rerun with --force)")
        self.ctx.truncate_metrics(int(saved.get("n_metrics", 0)))
        self.ctx.log(f"resumed the {self.label} at {self.where(saved[self.phase])}")
        return saved[self.phase]

    def save(self, state: dict[str, Any]) -> None:
        self.ctx.save_checkpoint({self.phase: state, "key": self.key, "n_metrics": len(self.ctx.metrics)})


class _SearchCheckpoint(_PhaseCheckpoint):
    phase = label = "search"

    def where(self, state: dict[str, Any]) -> str:
        return f"stage {state.get('stage')} {super().where(state)}"


class _EvalCheckpoint(_PhaseCheckpoint):
    """The evaluation's position; the cell's search is cached by then, so that search's position
    (left by a kill before ``_run_cell`` removed it) is ignored."""

    phase, label = "eval", "evaluation"

    def __init__(self, ctx, key: dict[str, Any], search_key: dict[str, Any]):
        super().__init__(ctx, key)
        self.search_key = _key_hash(search_key)

    def done_with(self, saved: dict[str, Any]) -> bool:
        return isinstance(saved.get("search"), dict) and saved.get("key") == self.search_key

    def start(self) -> None:
        _drop_eval_records(self.ctx)


# what a row runs: method, LFM variant, encoder (None: no encoder), similarity, ablation
def spec(method: str, encoder: str | None = None, variant: str = "two", similarity: str = "dot",
         drop: str = "none") -> dict[str, Any]:
    out: dict[str, Any] = {"method": method}
    if method.startswith("lfm-"):
        out.update(variant=variant, encoder=None if variant == "ps" else encoder, similarity=similarity, drop=drop)
    return out


DEFAULT_ENCODER = "resnet18"  # the encoder of a bare --encoder-weights FILE (the paper's, in all but 3 rows)


def encoder_weight_files(options: dict[str, Any]) -> dict[str, str]:
    """``--encoder-weights [ENCODER=]FILE`` items as encoder name -> file; a bare FILE is resnet18's."""
    from lfm_core.registries import ENCODERS

    names = ENCODERS.names()
    files: dict[str, str] = {}
    for item in options.get("encoder_weights") or ():
        head, sep, tail = str(item).partition("=")
        name, path = (head, tail) if sep and head in names else (DEFAULT_ENCODER, str(item))
        if sep and head not in names and not Path(item).exists():
            raise UsageError(f"--encoder-weights {item}: unknown encoder {head!r}; valid encoders: {', '.join(names)}")
        if name in files:
            raise UsageError(f"--encoder-weights given twice for {name} ({files[name]}, {path}); give one file per encoder")
        if not Path(path).expanduser().is_file():
            raise DataNotFoundError(f"--encoder-weights {item}: {path} is not a file")
        files[name] = path
    return files


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
            click.Option(["--standin"], type=click.Choice(STANDINS), default=None,
                         help="Embedded data set of the cpu/smoke profiles (default: photo_patches on cpu, "
                              "natural-photo patches, which separate architectures where digits do not; digits "
                              "on smoke). The paper profile ignores it."),
            click.Option(["--reuse/--no-reuse"], default=True, show_default=True,
                         help="Reuse a search/evaluation with identical settings and seed found under --results."),
            click.Option(["--encoder-weights"], multiple=True, metavar="[ENCODER=]FILE",
                         help="Local ImageNet weights (.pth/.pt/.safetensors state dict) of an LFM encoder, instead of "
                              "the Hugging Face cache (paper profile). A bare FILE is for resnet18; ENCODER=FILE for "
                              "another, e.g. resnet34=r34.pth (repeatable)."),
        ]
        if self.uses_imagenet:
            opts.append(click.Option(["--imagenet-root"], type=click.Path(file_okay=False), default=None,
                                     help="ImageNet folder with train/<class>/ and val/<class>/ (paper profile; "
                                          "default: DATA_ROOT/imagenet)."))
        return opts

    # -- grid -------------------------------------------------------------------------------
    def run_rows(self, profile: str, options: dict[str, Any] | None = None) -> list[str]:
        """The rows a profile runs (``options``: the command line's, as DR's ``run_rows`` takes;
        no NAS option changes the rows)."""
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

    @staticmethod
    def standin(profile: str, options: dict[str, Any]) -> str | None:
        """The embedded data set the cells search and evaluate on (``--standin``, default the
        profile's), or None on the paper profile (the columns' CIFAR)."""
        return settings(profile, options).data

    def cells(self, profile, options):
        cells = []
        engine = options.get("engine") or "auto"
        standin = self.standin(profile, options)
        for row in self.run_rows(profile, options):
            for column in self.run_columns(profile):
                cspec = self.column_specs[column]
                params = {"dataset": standin or self.row_dataset(row, column), **self.row_specs[row],
                          "eval": cspec.get("eval", "cifar")}
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
        given = set_values(options)
        cells = [c for c in self.cells(profile, options) if selected(c, options.get("only"))]
        imagenet = sorted({c.column for c in cells if c.params.get("eval") == "imagenet"})
        if "drop_path" in given and imagenet:
            raise UsageError(f"--set drop_path={given['drop_path']!r}: the ImageNet evaluation ({', '.join(imagenet)}) "
                             "trains without drop path, as DARTS's; the setting is the CIFAR evaluation's "
                             "(pick CIFAR columns with --only)")
        standin = self.standin(profile, options)
        if standin == "photo_patches":  # scikit-image's bundled photos (a one-line install message if absent)
            from lfm_core.data import photo_patch_arrays

            photo_patch_arrays()
        if standin:  # embedded data: nothing to find
            return
        root = options.get("data_root")
        for name in sorted({c.params["dataset"] for c in cells}):
            if name.startswith("cifar") and not has_cifar(root, name) and not options.get("download"):
                folder = CIFAR_FOLDERS[name]
                where = Path(root).expanduser() / folder if root else "(no --data-root given)"
                title = CIFAR_TITLES[name]
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
        files = encoder_weight_files(options)
        pretrained = settings(profile, options).search.pretrained
        encoders = sorted({c.params["encoder"] for c in cells if c.params.get("encoder")} - set(files))
        if encoders and pretrained:
            from lfm_core.encoders import PRETRAINED_TAG, cached_pretrained_file, hf_cache_dir

            for enc in encoders:
                if enc != "smallcnn" and cached_pretrained_file(f"{enc}.{PRETRAINED_TAG}") is None:
                    flag = "FILE" if enc == DEFAULT_ENCODER else f"{enc}=FILE"
                    raise DataNotFoundError(
                        f"the paper profile uses an ImageNet-pretrained {enc} encoder: no {enc}.{PRETRAINED_TAG} "
                        f"weights in the Hugging Face cache {hf_cache_dir()}; pass --encoder-weights {flag} "
                        f"(a {enc} state dict), or on a machine with internet run "
                        f"`python -c \"import timm; timm.create_model('{enc}.{PRETRAINED_TAG}', pretrained=True)\"` "
                        "and copy the cache here (or set HF_HOME)."
                    )

    def describe(self, profile, options):
        p = settings(profile, options)
        if p.data is None:
            return ("data: CIFAR-10/100 from --data-root (25k/25k search split), the paper's search and evaluation "
                    "protocol, ImageNet-pretrained ResNet encoders.")
        s = p.search
        what = {"digits": "scikit-learn digits", "photo_patches": "grey patches of ten scikit-image photos"}[p.data]
        return (f"data: {what} ({s.image_size}x{s.image_size}, embedded) stand in for CIFAR; "
                f"supernet C={s.C}, {s.layers} cells, {len(s.primitives or ())} primitives; random-init encoders. "
                "For the paper's numbers: --profile paper --data-root DIR.")

    # -- one run ----------------------------------------------------------------------------
    def resolve(self, cell, profile, options):
        p = settings(profile, options)
        out: dict[str, Any] = {"settings": p.record()}
        encoder = cell.params.get("encoder")
        files = encoder_weight_files(options)
        if encoder in files:  # the file's content is part of the run's identity
            out["encoder_weights"] = file_digest(files[encoder])
        if cell.params.get("eval") == "imagenet" and p.data is None:
            root = imagenet_root(options)
            if root is not None:  # where ImageNet is read from (--imagenet-root or DATA_ROOT/imagenet)
                out["imagenet_root"] = str(root.resolve())
        return out

    def overrides(self, cell, options):
        given = {k: options[k] for k in ("search_epochs", "eval_epochs", "batch_size") if options.get(k)}
        return {**given, **(options.get("set") or {})}

    def run_labels(self, config):
        s = (config.get("settings") or {}).get("settings") or {}
        if not s:
            return {}
        p = {**asdict(SearchSettings()), **asdict(EvalSettings())}  # the paper's protocol
        params = config.get("params") or {}
        labels = {}
        if params.get("dataset") in STANDINS:
            size, title = s["image_size"], STANDIN_TITLES[params["dataset"]]
            paper = CIFAR_TITLES.get(
                self.row_dataset(config["row"], config["column"]) if config["column"] in self.column_specs
                else "cifar100", "CIFAR")
            labels["data"] = f"{title} {size}×{size} (stand-in for {paper})"
            if params.get("eval") == "imagenet":
                labels["data"] += f"; ImageNet stand-in: {title} {s['imagenet_size']}×{s['imagenet_size']}"
        elif params.get("dataset"):
            labels["data"] = str(params["dataset"])
            inet = (config.get("settings") or {}).get("imagenet_root")
            if inet:
                labels["data"] += f"; ImageNet {s['imagenet_size']}×{s['imagenet_size']} from {inet}"
        if params.get("encoder"):
            enc = params["encoder"]
            labels["encoder"] = encoder_label(enc, bool(s.get("pretrained")), config["settings"].get("encoder_weights"),
                                              paper="ResNet-" + enc[6:] if enc.startswith("resnet") else enc)
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

    def search_config(self, params: dict[str, Any], s: SearchSettings, seed: int, num_classes: int,
                      encoder_weights: str | None = None) -> dict[str, Any]:
        from lfm_nas.operations import PRIMITIVES

        method = params["method"]
        prims = tuple(s.primitives or PRIMITIVES)
        cfg: dict[str, Any] = {"method": method, "C": s.C, "layers": s.layers, "primitives": prims,
                               "num_classes": num_classes, "seed": int(seed), "steps_per_epoch": s.steps_per_epoch}
        if method.endswith("pdarts"):
            ops = (len(prims),) + tuple(s.pdarts_ops[1:])
            cfg.update(pdarts_layers=tuple(s.pdarts_layers), pdarts_ops=ops,
                       pdarts_skip_dropout=tuple(s.pdarts_skip_dropout), lfm_start=s.pdarts_lfm_start)
        if "engine" in params:
            cfg["engine"] = params["engine"]
        if method.startswith("lfm-"):
            cfg.update(variant=params["variant"], similarity=params["similarity"], drop=params["drop"])
            if params.get("encoder"):
                cfg.update(encoder=params["encoder"], encoder_kwargs={"pretrained": bool(s.pretrained)})
                if encoder_weights:  # a local file wins over the Hugging Face cache
                    cfg["encoder_kwargs"]["weights"] = encoder_weights
        return cfg

    def run_search(self, params, seed, ctx, s: SearchSettings, device, key=None) -> dict[str, Any]:
        from lfm_nas.search import search

        bundle = load_bundle(params["dataset"], ctx, s.image_size)
        tr, va = search_split(bundle, seed, s.search_pool)
        bs = s.batch_size
        train_loader = _loader(tr, bs, True, seed, drop_last=True, device=device)
        val_loader = _loader(va, bs, True, seed + 1, drop_last=True, device=device)
        weights = ctx.config["settings"].get("encoder_weights")
        cfg = self.search_config(params, s, seed, bundle.num_classes, weights["path"] if weights else None)
        if ctx.mixed_precision not in (None, "no"):
            cfg["mixed_precision"] = ctx.mixed_precision
        epochs = s.pdarts_epochs if params["method"].endswith("pdarts") else s.search_epochs
        label = f"search {params['method']}"

        def log(record):
            ctx.log_metrics({"phase": "search", **record})

        _warm_up(cfg, tr, va, device)
        start = time.perf_counter()
        with PeakMemory(device) as mem:
            result = search(cfg, train_loader, val_loader, epochs, device=device, log=log,
                            progress=lambda done, total: ctx.progress(done, total, label),
                            checkpoint=_SearchCheckpoint(ctx, key) if key is not None else None)
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

    def run_eval(self, genotype, params, seed, ctx, search: SearchSettings, s: EvalSettings, device,
                 checkpoint=None) -> dict[str, Any]:
        from lfm_nas.search import train_eval

        def log(record):
            ctx.log_metrics({"phase": "eval", **record})

        name = params["dataset"]
        if params.get("eval") == "imagenet":
            if name in STANDINS:  # the stand-in at the ImageNet network's resolution
                bundle = load_bundle(name, ctx, s.imagenet_size)
            else:  # the paper's ImageNet
                from lfm_core.data import load_dataset

                root = ctx.config["settings"].get("imagenet_root") or imagenet_root({"data_root": ctx.data_root})
                bundle = load_dataset("imagefolder", root=str(root), image_size=s.imagenet_size)
            train = _loader(bundle.train, s.imagenet_batch, True, seed, device=device)
            test = _loader(bundle.test, 256, False, seed, device=device)
            res = train_eval_imagenet(genotype, train, test, s.imagenet_epochs, C=s.imagenet_C,
                                      layers=s.imagenet_layers, num_classes=bundle.num_classes,
                                      auxiliary_weight=s.auxiliary, lr=s.imagenet_lr, device=device, seed=seed, log=log,
                                      progress=lambda d, t: ctx.progress(d, t, "evaluate (ImageNet network)"),
                                      checkpoint=checkpoint)
            return {**res, "test_err": res["top1_err"], "eval_dataset": bundle.name,
                    "eval_network": f"NetworkImageNet(C={s.imagenet_C}, layers={s.imagenet_layers})"}
        bundle = load_bundle(name, ctx, search.image_size)
        train = _loader(bundle.train, s.eval_batch, True, seed, device=device)
        test = _loader(bundle.test, 256, False, seed, device=device)
        res = train_eval(genotype, train, test, s.eval_epochs, C=s.eval_C, layers=s.eval_layers,
                         auxiliary_weight=s.auxiliary, drop_path=s.drop_path, cutout=s.cutout,
                         lr=s.eval_lr, device=device, num_classes=bundle.num_classes, seed=seed, log=log,
                         progress=lambda d, t: ctx.progress(d, t, "evaluate"), checkpoint=checkpoint)
        return {"test_err": float(res["test_err"]), "test_acc": float(res["test_acc"]),
                "eval_epoch_s": float(res["epoch_time_s"]), "eval_dataset": bundle.name,
                "eval_network": f"NetworkCIFAR(C={s.eval_C}, layers={s.eval_layers})"}

    def needs_eval(self, params: dict[str, Any]) -> bool:
        return params.get("measure") in (None, "error", "top1", "top5")

    def run_cell(self, cell, profile, seed, ctx):
        device = _device(ctx)
        with cpu_threads(device, profile):
            metrics = self._run_cell(cell, profile, seed, ctx, device)
        metrics["threads"] = torch.get_num_threads() if device.type == "cpu" else None
        return metrics

    @staticmethod
    def eval_cache_key(genotype: dict[str, Any], params: dict[str, Any], profile: str, recorded: dict[str, Any],
                       seed: int, device: str, data_root: str | None) -> dict[str, Any]:
        """The evaluation's cache key from a run's recorded settings (``recorded``: its
        ``config["settings"]``). The CIFAR network reads the search's ``image_size``: it is in the
        key where it differs from the profile's, so that keys made before it stay valid."""
        search, evaluation = SearchSettings.of(recorded["settings"]), EvalSettings.of(recorded["settings"])
        cifar = params.get("eval", "cifar") == "cifar"
        image_size = search.image_size if cifar and search.image_size != PROFILES[profile].search.image_size else None
        return eval_key(genotype, params, evaluation, seed, device, data_root=data_root,
                        imagenet_root=recorded.get("imagenet_root"), image_size=image_size)

    def _run_cell(self, cell, profile, seed, ctx, device):
        opts = getattr(ctx, "options", None) or {}  # (the config holds no selectors such as --no-reuse)
        recorded = ctx.config["settings"]
        search, evaluation = SearchSettings.of(recorded["settings"]), EvalSettings.of(recorded["settings"])
        params = cell.params
        cache = SearchCache(ctx, profile, enabled=opts.get("reuse", True) is not False)
        # extras recorded only when set, so that earlier caches stay valid
        data_root = (ctx.config.get("runtime") or {}).get("data_root")  # on-disk data (the paper profile's CIFAR)
        skey = search_key(params, search, seed, device.type,
                          mixed_precision=None if ctx.mixed_precision in (None, "no") else ctx.mixed_precision,
                          encoder_weights=(recorded.get("encoder_weights") or {}).get("sha256"),
                          data_root=data_root)
        found = cache.get("search", skey)
        if found is None:
            found = cache.put("search", skey, self.run_search(params, seed, ctx, search, device, key=skey))
            ctx.checkpoint_path.unlink(missing_ok=True)  # the search's position (supernets, encoder) is done with
        genotype = genotype_from_dict(found["genotype"])
        save_genotype(genotype, Path(ctx.run_dir) / "genotype.json")
        metrics: dict[str, Any] = {k: v for k, v in found.items() if k not in ("key", "producer", "genotype")}
        metrics["genotype"] = json.dumps(genotype_to_dict(genotype))
        metrics["search_gpu_days"] = metrics["search_s"] / 86400.0
        if found["producer"] != str(ctx.run_dir):
            metrics["search_from"] = found["producer"]
        if self.needs_eval(params):
            ekey = self.eval_cache_key(found["genotype"], params, profile, recorded, seed, device.type, data_root)
            ev = cache.get("eval", ekey)
            if ev is None:
                ev = cache.put("eval", ekey, self.run_eval(genotype, params, seed, ctx, search, evaluation,
                                                           device, checkpoint=_EvalCheckpoint(ctx, ekey, skey)))
            ctx.checkpoint_path.unlink(missing_ok=True)  # the evaluation's position is done with
            metrics.update({k: v for k, v in ev.items() if k not in ("key", "producer")})
            if ev["producer"] != str(ctx.run_dir):
                metrics["eval_from"] = ev["producer"]
        ctx.log(f"genotype: {metrics['genotype']}")
        return self.finish_metrics(cell, metrics)

    def finish_metrics(self, cell: Cell, metrics: dict[str, Any]) -> dict[str, Any]:
        return metrics
