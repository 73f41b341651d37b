"""The paper's NAS tables (I-V, X) and figures (4-5) as registered experiments.

Every cell is one architecture search (:func:`lfm_nas.search.search`) followed by one
evaluation of the derived genotype trained from scratch (:func:`lfm_nas.search.train_eval`,
or :func:`train_eval_imagenet` for the ImageNet transfer columns).

Profiles:

* ``paper``: the paper's protocol (DESIGN.md section 4) on CIFAR-10/100 from ``--data-root``
  (25k/25k search split of the 50k training images; DARTS supernet of 8 cells, C=16, 8
  primitives, 50 epochs; P-DARTS 3 stages of 25 epochs, 5 -> 11 -> 17 cells, 8 -> 5 -> 3
  operations, LFM from epoch 10 of each stage; evaluation network of 20 cells, C=36, 600
  epochs, batch 96, cutout 16, auxiliary 0.4, drop path 0.2; ImageNet: 14 cells, C=48, 250
  epochs from ``--imagenet-root``) with ImageNet-pretrained ResNet encoders from the local
  Hugging Face cache.
* ``cpu``: scikit-learn's embedded digits stand in for CIFAR (16x16 images, the 1,257
  training images split in half for the search), a 5-cell C=8 supernet with 5 primitives, a
  few search epochs and a short evaluation; random-init encoders of the named architectures.
  The ImageNet columns are a stand-in transfer: the searched cell in the ImageNet network
  (its 3-convolution stem) trained on digits at 32x32, top-1 and top-5 error.
* ``smoke``: the same code path in seconds (8x8 digits, 3-cell C=4 supernet, 4 primitives).

A search or an evaluation with identical settings and seed is computed once per results
root and reused by every cell that needs it (e.g. table I's LFM-DARTS-2nd-R18 search serves
table IV's TN+DARTS and table X's "no PS" row, as in the paper where these are the same
runs); ``--no-reuse`` turns that off. The cache lives in ``<results>/.nas-cache``; a cell
records which run produced what it reused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import click
import torch

from lfm_core.errors import CheckpointError, DataNotFoundError, UsageError
from lfm_core.runtime import PeakMemory, cpu_threads
from lfm_core.experiments import Cell, Experiment, PaperValue, pv
from lfm_core.io import atomic_write_json
from lfm_core.solver import ENGINES as SOLVER_ENGINES
from lfm_nas.genotypes import genotype_from_dict, genotype_to_dict, save_genotype

# ------------------------------------------------------------------------------------
# profiles
# ------------------------------------------------------------------------------------
P4 = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")
P5 = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")

PROFILE_SETTINGS: dict[str, dict[str, Any]] = {
    "smoke": dict(
        image_size=8, search_pool=64, batch_size=16, search_epochs=1, steps_per_epoch=2,
        C=4, layers=3, primitives=P4,
        pdarts_layers=(3, 3, 4), pdarts_ops=(4, 3, 2), pdarts_epochs=1, pdarts_lfm_start=0,
        pdarts_skip_dropout=(0.0, 0.1, 0.2),
        eval_C=4, eval_layers=3, eval_epochs=1, eval_batch=64, eval_lr=0.05, cutout=0, auxiliary=0.4,
        drop_path=0.0,
        imagenet_size=16, imagenet_C=4, imagenet_layers=3, imagenet_epochs=1, imagenet_batch=64,
        imagenet_lr=0.05,
        pretrained=False, search_dataset="digits",
    ),
    "cpu": dict(
        image_size=16, search_pool=None, batch_size=32, search_epochs=3, steps_per_epoch=8,
        C=8, layers=5, primitives=P5,
        pdarts_layers=(3, 5, 6), pdarts_ops=(5, 3, 2), pdarts_epochs=2, pdarts_lfm_start=1,
        pdarts_skip_dropout=(0.0, 0.2, 0.4),
        eval_C=8, eval_layers=6, eval_epochs=8, eval_batch=64, eval_lr=0.05, cutout=4, auxiliary=0.4,
        drop_path=0.1,
        imagenet_size=32, imagenet_C=8, imagenet_layers=5, imagenet_epochs=8, imagenet_batch=64,
        imagenet_lr=0.05,
        pretrained=False, search_dataset="digits",
    ),
    "paper": dict(
        image_size=32, search_pool=None, batch_size=64, search_epochs=50, steps_per_epoch=None,
        C=16, layers=8, primitives=None,  # None: all 8 DARTS primitives
        pdarts_layers=(5, 11, 17), pdarts_ops=(8, 5, 3), pdarts_epochs=25, pdarts_lfm_start=10,
        pdarts_skip_dropout=(0.1, 0.4, 0.7),
        eval_C=36, eval_layers=20, eval_epochs=600, eval_batch=96, eval_lr=0.025, cutout=16, auxiliary=0.4,
        drop_path=0.2,
        imagenet_size=224, imagenet_C=48, imagenet_layers=14, imagenet_epochs=250, imagenet_batch=128,
        imagenet_lr=0.1,
        pretrained=True, search_dataset=None,  # None: the column's CIFAR
    ),
}

ENGINES = ("auto", *SOLVER_ENGINES)


def has_cifar(root: Any, name: str) -> bool:
    if not root:
        return False
    folder = "cifar-100-python" if name == "cifar100" else "cifar-10-batches-py"
    base = Path(root).expanduser()
    return (base / folder).is_dir() or base.name == folder


def imagenet_root(options: dict[str, Any]) -> Path | None:
    if options.get("imagenet_root"):
        return Path(options["imagenet_root"]).expanduser()
    if options.get("data_root"):
        return Path(options["data_root"]).expanduser() / "imagenet"
    return None




def _device(ctx) -> torch.device:
    if getattr(ctx, "device", None):
        return torch.device(ctx.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_WARM: set[Any] = set()


def _warm_up(cfg: dict[str, Any], tr, va, device: torch.device) -> None:
    """Pay the process's one-time costs before a search is measured: importing timm, the lazy
    imports of the first optimiser step and forward-mode AD (torch._dynamo alone is ~150 MB of
    resident memory on CPU), the first use of each convolution kernel. One step of a 3-cell
    supernet of the same kind on 4 examples, once per process and kind of search."""
    from lfm_nas.search import search

    method = {"pdarts": "darts1", "lfm-pdarts": "lfm-darts"}.get(cfg["method"], cfg["method"])
    key = (method, cfg.get("variant"), cfg.get("encoder"), cfg.get("engine"), device.type)
    if key in _WARM:
        return
    tiny = {k: v for k, v in cfg.items() if not k.startswith("pdarts_") and k != "lfm_start"}
    tiny.update(method=method, layers=3, steps_per_epoch=1, seed=0)
    if isinstance(tiny.get("encoder_kwargs"), dict):
        tiny["encoder_kwargs"] = {**tiny["encoder_kwargs"], "pretrained": False}
    n = min(4, len(tr), len(va))
    sub_tr, sub_va = tr.subset(list(range(n))), va.subset(list(range(n)))
    search(tiny, _loader(sub_tr, 2, False, 0, device=device), _loader(sub_va, 2, False, 0, device=device), 1,
           device=device)
    _WARM.add(key)


# ------------------------------------------------------------------------------------
# the search / evaluation cache
# ------------------------------------------------------------------------------------
def _key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _results_root(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    parents = run_dir.parents
    return parents[3] if len(parents) > 3 else run_dir  # <results>/<experiment>/<profile>/<cell>/seedK


def _attempts(run_dir: Path) -> int:
    """How many times the runner started this run directory since it was last cleared (``--force``
    removes the log): more than one means an interrupted run is being resumed."""
    try:
        return sum(1 for line in (Path(run_dir) / "log.txt").read_text().splitlines() if "] start " in line)
    except OSError:
        return 0


# the fields the cells read from a cache entry, and their types
CACHE_FIELDS = {"search": {"genotype": dict, "search_s": (int, float), "search_epoch_s": (int, float)},
                "eval": {"test_err": (int, float)}}


def _cache_entry_problem(kind: str, entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return "unreadable" if entry is None else f"holds {type(entry).__name__}, not an object"
    for name, types in {"key": dict, "producer": str, **CACHE_FIELDS[kind]}.items():
        if not isinstance(entry.get(name), types) or isinstance(entry.get(name), bool):
            return f"no valid {name!r}"
    try:
        genotype_from_dict(entry["genotype"]) if kind == "search" else None
    except Exception:
        return "no valid 'genotype'"
    return None


class _Cache:
    def __init__(self, ctx, profile: str, enabled: bool):
        self.run_dir = Path(ctx.run_dir)
        self.root = _results_root(self.run_dir) / ".nas-cache" / profile
        self.enabled = enabled
        self.resuming = _attempts(self.run_dir) > 1
        self.ctx = ctx

    def path(self, kind: str, key: dict[str, Any]) -> Path:
        return self.root / f"{kind}-{_key_hash(key)}.json"

    def get(self, kind: str, key: dict[str, Any]) -> dict[str, Any] | None:
        path = self.path(kind, key)
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            entry = None
        problem = _cache_entry_problem(kind, entry)
        if problem:
            self.ctx.log(f"warning: ignoring the cache entry {path} ({problem}); computing it again")
            return None
        if entry.get("key") != json.loads(json.dumps(key, default=str)):
            return None
        own = entry.get("producer") == str(self.run_dir)
        if own and self.resuming:
            self.ctx.log(f"resume: {kind} already finished by this run ({path.name})")
            return entry
        if own or not self.enabled:
            return None  # a forced rerun (or --no-reuse): compute again
        self.ctx.log(f"reused {kind} from {entry.get('producer')} ({path.name})")
        return entry

    def put(self, kind: str, key: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
        entry = {**value, "key": key, "producer": str(self.run_dir)}
        atomic_write_json(self.path(kind, key), entry)
        return entry


class _SearchCheckpoint:
    """A search's position in its run directory's checkpoint (``search(checkpoint=...)``), tagged
    with the search's key; loading it truncates metrics.jsonl to the records it covers."""

    def __init__(self, ctx, key: dict[str, Any]):
        self.ctx, self.key = ctx, _key_hash(key)

    def load(self) -> dict[str, Any] | None:
        saved = self.ctx.load_checkpoint()
        if saved is None:
            return None
        if not isinstance(saved.get("search"), dict) or saved.get("key") != self.key:
            raise CheckpointError(f"checkpoint {self.ctx.checkpoint_path} is not this search's "
                                  "(delete it or rerun with --force)")
        self.ctx.truncate_metrics(int(saved.get("n_metrics", 0)))
        self.ctx.log(f"resumed the search at stage {saved['search'].get('stage')} epoch "
                     f"{saved['search'].get('epoch')} step {saved['search'].get('step')}")
        return saved["search"]

    def save(self, state: dict[str, Any]) -> None:
        self.ctx.save_checkpoint({"search": state, "key": self.key, "n_metrics": len(self.ctx.metrics)})


def _drop_eval_records(ctx) -> None:
    """Before an evaluation (re)starts: metrics.jsonl keeps the search's records only."""
    records = ctx.metrics
    keep = next((i for i, r in enumerate(records) if r.get("phase") == "eval"), len(records))
    if keep < len(records):
        ctx.truncate_metrics(keep)


# ------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------
def _loader(dataset, batch_size: int, shuffle: bool, seed: int, drop_last: bool = False, device=None):
    from torch.utils.data import DataLoader

    g = torch.Generator().manual_seed(int(seed))
    workers = 0
    if not hasattr(dataset, "images"):  # read from disk (ImageNet): a few workers
        workers = min(8, os.cpu_count() or 1)
    pin = bool(device is not None and torch.device(device).type == "cuda")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=g if shuffle else None,
                      drop_last=drop_last and len(dataset) >= batch_size, num_workers=workers, pin_memory=pin)


def load_bundle(name: str, profile: str, ctx, image_size: int | None = None, augment: bool = False):
    from lfm_core.data import load_dataset

    if name == "digits":
        return load_dataset("digits", image_size=image_size or PROFILE_SETTINGS[profile]["image_size"])
    if name in ("cifar10", "cifar100"):
        return load_dataset(name, root=ctx.data_root, download=ctx.download, augment=augment)
    raise UsageError(f"unknown search data set {name!r}")


def search_split(bundle, seed: int, pool: int | None):
    """Search-train / search-val halves of the training pool (a seeded permutation; ``pool``
    caps the number of examples used, e.g. the 25k/25k CIFAR split takes all 50k)."""
    n = len(bundle.train)
    g = torch.Generator().manual_seed(10_007 * int(seed) + 17)
    perm = torch.randperm(n, generator=g)
    if pool:
        perm = perm[: min(int(pool), n)]
    half = len(perm) // 2
    return bundle.train.subset(perm[:half].numpy()), bundle.train.subset(perm[half:].numpy())


# ------------------------------------------------------------------------------------
# ImageNet-style evaluation (top-1 and top-5)
# ------------------------------------------------------------------------------------
def train_eval_imagenet(genotype, train_loader: Iterable, test_loader: Iterable, epochs: int, C: int = 48,
                        layers: int = 14, num_classes: int = 1000, auxiliary_weight: float = 0.4,
                        drop_path: float = 0.0, lr: float = 0.1, momentum: float = 0.9,
                        weight_decay: float = 3e-5, label_smoothing: float = 0.1, gamma: float = 0.97,
                        grad_clip: float | None = 5.0, device: str | torch.device = "cpu", seed: int | None = None,
                        log: Callable[[dict], None] | None = None,
                        progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """DARTS' ImageNet protocol: ``NetworkImageNet(C, layers)`` trained with SGD (lr decayed by
    ``gamma`` every epoch), label smoothing and the auxiliary head; top-1 and top-5 test error."""
    from lfm_nas.eval_net import NetworkImageNet
    from lfm_nas.search import train_epochs

    device = torch.device(device)
    if seed is not None:
        torch.manual_seed(seed)
    model = NetworkImageNet(C, num_classes, layers, auxiliary_weight > 0, genotype, drop_path).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=gamma)
    train_epochs(model, opt, sched, train_loader, epochs, device, drop_path=drop_path,
                 auxiliary_weight=auxiliary_weight, label_smoothing=label_smoothing, grad_clip=grad_clip,
                 log=log, progress=progress)
    model.eval()
    k = min(5, num_classes)
    top1 = topk = n = 0
    with torch.no_grad():
        for batch in test_loader:
            x, y = batch[0].to(device), batch[1].to(device)
            pred = model(x)[0].topk(k, dim=1).indices
            top1 += int((pred[:, 0] == y).sum())
            topk += int((pred == y[:, None]).any(1).sum())
            n += y.numel()
    n = max(1, n)
    return {"top1_err": 100.0 * (1 - top1 / n), "top5_err": 100.0 * (1 - topk / n), "test_acc": 100.0 * top1 / n}


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
                if profile != "paper":
                    dataset = PROFILE_SETTINGS[profile]["search_dataset"]
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
        if profile != "paper":
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
        if profile == "paper":
            return ("data: CIFAR-10/100 from --data-root (25k/25k search split), the paper's search and evaluation "
                    "protocol, ImageNet-pretrained ResNet encoders.")
        s = PROFILE_SETTINGS[profile]
        return (f"data: scikit-learn digits ({s['image_size']}x{s['image_size']}, embedded) stand in for CIFAR; "
                f"supernet C={s['C']}, {s['layers']} cells, {len(s['primitives'])} primitives; random-init encoders. "
                "For the paper's numbers: --profile paper --data-root DIR.")

    # -- one run ----------------------------------------------------------------------------
    def settings(self, profile: str, options: dict[str, Any]) -> dict[str, Any]:
        s = dict(PROFILE_SETTINGS[profile])
        if options.get("search_epochs"):
            s["search_epochs"] = s["pdarts_epochs"] = int(options["search_epochs"])
            s["pdarts_lfm_start"] = min(s["pdarts_lfm_start"], s["pdarts_epochs"] - 1)
        if options.get("eval_epochs"):
            s["eval_epochs"] = s["imagenet_epochs"] = int(options["eval_epochs"])
        if options.get("batch_size"):
            s["batch_size"] = int(options["batch_size"])
        return s

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

    def run_search(self, params, profile, seed, ctx, s, device, key=None) -> dict[str, Any]:
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

    def run_eval(self, genotype, params, profile, seed, ctx, s, device) -> dict[str, Any]:
        from lfm_nas.search import train_eval

        def log(record):
            ctx.log_metrics({"phase": "eval", **record})

        if params.get("eval") == "imagenet":
            if profile == "paper":
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
        s = self.settings(profile, opts)
        params = cell.params
        cache = _Cache(ctx, profile, enabled=opts.get("reuse", True) is not False)
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
            found = cache.put("search", skey, self.run_search(params, profile, seed, ctx, s, device, key=skey))
            ctx.checkpoint_path.unlink(missing_ok=True)  # the search's position (supernets, encoder) is done with
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
                _drop_eval_records(ctx)
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
        if profile == "paper":
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
        if profile == "paper":
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
        metrics["value"] = float(metrics[MEASURE_KEY[cell.params["measure"]]])
        return metrics


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
                dataset = "cifar100" if profile == "paper" else PROFILE_SETTINGS[profile]["search_dataset"]
                params = {"dataset": dataset, **spec(method, "resnet18", **self.row_args[row]), "eval": "cifar",
                          "engine": self.resolve_engine(method, engine)}
                cells.append(Cell(row, column, params))
        return cells

    def plot(self, frame, out_path):
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


def plot_bars(frame, out_path, rows: list[str], columns: list[str], title: str, metric: str = "test_err",
              ylabel: str = "Test error (%)") -> None:
    """Grouped bars (one group per column that has runs, one bar per row): mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols = [c for c in columns if metric in frame and frame.loc[frame["column"] == c, metric].notna().any()]
    cols = cols or list(columns[:1])
    fig, ax = plt.subplots(figsize=(max(5.5, 2.6 * len(cols) + 2.5), 4.2), constrained_layout=True)
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(cols))
    top = 0.0
    for i, row in enumerate(rows):
        means, stds, ns = [], [], []
        for column in cols:
            vals = frame.loc[(frame["row"] == row) & (frame["column"] == column), metric].dropna() \
                if metric in frame else []
            means.append(float(np.mean(vals)) if len(vals) else np.nan)
            stds.append(float(np.std(vals)) if len(vals) > 1 else 0.0)
            ns.append(len(vals))
        pos = x + (i - (len(rows) - 1) / 2) * width
        bars = ax.bar(pos, means, width, yerr=stds, capsize=3, label=row)
        for b, m, n in zip(bars, means, ns):
            if not math.isnan(m):
                ax.annotate(f"{m:.1f}", (b.get_x() + b.get_width() / 2, m), ha="center", va="bottom", fontsize=7,
                            xytext=(0, 2), textcoords="offset points")
                top = max(top, m)
    profiles = ", ".join(sorted({str(p) for p in frame.get("profile", [])})) if len(frame) else ""
    datasets = ", ".join(sorted({str(d) for d in frame.get("dataset", []) if d})) if len(frame) else ""
    seeds = int(frame["seed"].nunique()) if "seed" in frame and len(frame) else 0
    ax.set_xticks(x, cols)
    ax.set_xlabel("search method (LFM applied to)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max(1.0, top * 1.18))
    ax.set_title(f"{title}\nours: profile {profiles or '-'}, data {datasets or '-'}, {seeds} seed(s); "
                 "paper values not printed", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)


__all__ = ["Table1", "Table2", "Table3", "Table4", "Table5", "Table10", "Figure4", "Figure5", "PROFILE_SETTINGS",
           "PeakMemory", "train_eval_imagenet", "search_split", "plot_bars"]
