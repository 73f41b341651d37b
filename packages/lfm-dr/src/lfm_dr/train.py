"""The training every DR method shares: data order, lr schedule, evaluation, and what its
checkpoints hold; the loop itself (resume at any step, a graceful stop on SIGTERM/SIGINT, the
guard against non-finite losses) is :func:`lfm_core.loop.run_loop`."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lfm_core.errors import check_choice, CheckpointError, UsageError
from lfm_core.registries import METHODS, MODELS
from lfm_core.runtime import (
    all_reduce_mean, compile_module, process_accelerator, rng_state, seed_everything, set_rng_state,
)
from lfm_core.loop import Loop, NonFiniteGuard, Position, run_loop
from lfm_core.stopping import stop_requested
from lfm_dr.diagnostics import clean_mask_of
from lfm_dr.methods.base import DRContext, DRMethod

MAX_BAD_STEPS = 5
# the methods whose steps average gradients across launched processes (the solver's reduce hook)
MULTI_PROCESS_METHODS = ("lfm",)


@dataclass
class TrainConfig:
    method: str = "ce"
    model: str = "resnet32"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 100
    batch_size: int = 100
    meta_batch_size: int = 100
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (0.8, 0.9)  # fractions of the epochs where lr /= 10
    options: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    augment: Callable[[Tensor], Tensor] | None = None
    eval_batch_size: int = 500
    mixed_precision: str = "no"  # "bf16" or "fp16" (with a loss scaler; meant for GPUs): autocast of the forward passes
    compile: bool = False  # torch.compile the networks and the encoder (lfm_core.runtime.compile_module)


class _Stream:
    """Deterministic, resumable batches: epoch e uses the permutation of generator seed (seed, e)."""

    def __init__(self, data: Dataset, batch_size: int, seed: int, drop_last: bool = True):
        self.data, self.batch_size, self.seed, self.drop_last = data, batch_size, seed, drop_last
        n = len(data)
        self.per_epoch = n // batch_size if drop_last and n >= batch_size else math.ceil(n / batch_size)
        self.epoch, self.pos = 0, 0

    def order(self, epoch: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(len(self.data), generator=g)

    def batch_indices(self, epoch: int, step: int) -> Tensor:
        return self.order(epoch)[step * self.batch_size:(step + 1) * self.batch_size]

    def batches_from(self, idx: Tensor, epochs: int) -> Iterator[Tensor] | None:
        """The batches of epochs 0..epochs-1 from the one equal to ``idx`` on, in order (None if
        none is ``idx``): what a reader can load ahead of the training loop."""
        if len(idx) == 0:
            return None
        for epoch in range(epochs):
            perm = self.order(epoch)
            where = (perm == idx[0]).nonzero().flatten()
            step, offset = divmod(int(where[0]), self.batch_size) if len(where) else (self.per_epoch, 1)
            if offset == 0 and step < self.per_epoch and torch.equal(self.batch_indices(epoch, step), idx):
                return self._batches(epoch, step, epochs)
        return None

    def _batches(self, epoch: int, step: int, epochs: int) -> Iterator[Tensor]:
        for e in range(epoch, epochs):
            perm = self.order(e)
            for s in range(step if e == epoch else 0, self.per_epoch):
                yield perm[s * self.batch_size:(s + 1) * self.batch_size]

    def next(self) -> Tensor:
        if self.pos >= self.per_epoch:
            self.epoch, self.pos = self.epoch + 1, 0
        idx = self.batch_indices(self.epoch, self.pos)
        self.pos += 1
        return idx


def gather(data: Dataset, idx: Tensor, device, augment=None) -> tuple[Tensor, Tensor, Tensor]:
    if hasattr(data, "images") and hasattr(data, "labels") and getattr(data, "transform", None) is None:
        x, y = data.images[idx], data.labels[idx]
    elif hasattr(data, "fetch"):  # a batch-at-a-time reader, e.g. lfm_dr.fit's DataLoader over a user's dataset
        x, y = data.fetch(idx)
    else:
        items = [data[int(i)] for i in idx]
        x = torch.stack([it[0] for it in items])
        y = torch.tensor([it[1] for it in items])
    if augment is not None:
        x = augment(x)
    return x.to(device), y.to(device), idx.to(device)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Dataset, num_classes: int, device, batch_size: int = 500):
    """Accuracy (%) and the confusion matrix (rows: true class)."""
    was = model.training
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)))
        x, y, _ = gather(data, idx, device)
        pred = model(x).argmax(1).cpu()
        conf += torch.bincount(y.cpu() * num_classes + pred, minlength=num_classes**2).view(num_classes, num_classes)
    model.train(was)
    return 100.0 * float(conf.diag().sum()) / max(int(conf.sum()), 1), conf


def device_of(cfg: TrainConfig) -> torch.device:
    if cfg.device:
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_method(cfg: TrainConfig, splits, seed: int, device, reduce=None,
                 log=None) -> tuple[DRMethod, _Stream, _Stream]:
    num_classes = splits.num_classes
    counts = torch.bincount(splits.train.labels, minlength=num_classes).tolist()
    meta_stream = _Stream(splits.meta, min(cfg.meta_batch_size, len(splits.meta)), seed + 7919)

    def next_meta():
        return gather(splits.meta, meta_stream.next(), device)

    def model_fn():
        model = MODELS.create(cfg.model, num_classes=num_classes, **cfg.model_kwargs).to(device)
        return compile_module(model) if cfg.compile else model

    ctx = DRContext(
        model_fn=model_fn, num_classes=num_classes, class_counts=counts, n_train=len(splits.train),
        n_meta=len(splits.meta), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        epochs=cfg.epochs, next_meta=next_meta, device=device, options=dict(cfg.options),
        grad_scaler=loss_scaler(cfg, device), reduce=reduce, compile=cfg.compile, log=log,
    )
    method = METHODS.get(cfg.method)(ctx)
    return method, training_order(cfg, splits.train, seed), meta_stream


def training_order(cfg: TrainConfig, data: Dataset, seed: int) -> _Stream:
    """The order of the training batches (a pure function of the seed and epoch)."""
    return _Stream(data, min(cfg.batch_size, len(data)), seed)


def autocast(cfg: TrainConfig, device: torch.device):
    """Autocast for the forward passes; the solver keeps its hypergradient products in float32."""
    if cfg.mixed_precision in (None, "no"):
        return contextlib.nullcontext()
    check_choice("mixed precision", cfg.mixed_precision, ("no", "fp16", "bf16"))
    dtype = torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def loss_scaler(cfg: TrainConfig, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 gradients underflow without loss scaling; bf16 has float32's range and needs none.
    The first scale is 2**10 rather than 2**16, so the first steps do not overflow in a row."""
    if cfg.mixed_precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type, init_scale=2.0**10)


def lr_factor(cfg: TrainConfig, epoch: int) -> float:
    return 0.1 ** sum(epoch >= round(m * cfg.epochs) for m in cfg.milestones)


def train_dr(cfg: TrainConfig, splits, seed: int, ctx) -> dict[str, Any]:
    """Train one method on one split; resumes from ``ctx``'s checkpoint. Returns final metrics.

    SIGTERM/SIGINT during training finish the step in progress (or the epoch's evaluation), save
    the exact position and raise :class:`lfm_core.errors.GracefulStop`; the resumed run then gives
    the result of an uninterrupted one."""
    device, acc = _process_device(cfg)
    seed_everything(seed)
    reduce = all_reduce_mean(acc)
    method, train_stream, meta_stream = build_method(cfg, splits, seed, device, reduce, log=ctx.log)
    guard = NonFiniteGuard(MAX_BAD_STEPS, in_a_row=True, advice=lambda epoch: (
        f" (method {cfg.method}, lr {cfg.lr * lr_factor(cfg, epoch):g}); no result was written and the same "
        "settings diverge again: change the learning rate, the mixed precision or the seed"))
    run = DRRun(cfg, splits, ctx, method, train_stream, meta_stream, device, reduce, guard,
                 shard=slice(acc.process_index, None, acc.num_processes) if acc is not None else slice(None))
    start, wall_before = Position(), 0.0
    state = ctx.load_checkpoint()
    if state is not None:
        start, wall_before = run.resume(state)
    run.t0 = time.perf_counter() - wall_before
    run_loop(Loop(name="dr", epochs=cfg.epochs, steps=train_stream.per_epoch, step=run.step, end_epoch=run.end_epoch,
                  begin_epoch=run.begin_epoch, save=run.save, record=ctx.log_metrics, progress=run.progress,
                  guard=guard, stop_asked=run.stop_asked, log=ctx.log), start)
    metrics = _final_metrics(method, splits, device, cfg.eval_batch_size, guard.skipped)
    metrics["_resumed_wall_s"] = wall_before
    return metrics


def _process_device(cfg: TrainConfig):
    """The device of this process and its accelerator, when launched as several processes
    (accelerate launch / torchrun): each takes its shard of every training batch, the meta batch
    is shared, and the solver averages gradients and hypergradients explicitly (DDP has no double
    backward); the same seed keeps models equal."""
    device = device_of(cfg)
    acc = process_accelerator(device)
    world = acc.num_processes if acc is not None else 1
    if world > 1:
        if cfg.method not in MULTI_PROCESS_METHODS:
            raise UsageError(f"method {cfg.method!r} runs in one process; of the DR methods only "
                             f"{', '.join(MULTI_PROCESS_METHODS)} split their batches across the {world} "
                             "launched processes (run it in one process: without torchrun or accelerate launch)")
        if device.type == "cuda":
            device = acc.device
    return device, acc


@dataclass
class DRRun:
    """One DR run between the loop's calls: the method, its data order, the running train_*
    sums of the epoch in progress, and what a checkpoint holds. Public so that other trainers
    on the DR schedule (``lfm_dr.label_issues``) drive ``lfm_core.loop.run_loop`` with it."""

    cfg: TrainConfig
    splits: Any
    ctx: Any
    method: DRMethod
    train_stream: _Stream
    meta_stream: _Stream
    device: torch.device
    reduce: Callable | None
    guard: NonFiniteGuard
    shard: slice  # this process's part of every training batch
    sums: dict[str, float] = field(default_factory=dict)
    t0: float = 0.0  # perf_counter at the run's start, less the time before a resume
    base_lr: dict[str, list[float]] = field(init=False)

    def __post_init__(self) -> None:
        self.base_lr = {name: [g["lr"] for g in opt.param_groups] for name, opt in self.scheduled().items()}

    def scheduled(self) -> dict[str, torch.optim.Optimizer]:
        return {name: opt for name, opt in self.method.optimizers().items() if name in self.method.scheduled}

    def begin_epoch(self, epoch: int) -> None:
        factor = lr_factor(self.cfg, epoch)
        for name, opt in self.scheduled().items():
            for group, lr in zip(opt.param_groups, self.base_lr[name]):
                group["lr"] = lr * factor

    def step(self, epoch: int, step: int) -> bool:
        idx = self.train_stream.batch_indices(epoch, step)[self.shard]
        x, y, idx = gather(self.splits.train, idx, self.device, self.cfg.augment)
        with autocast(self.cfg, self.device):
            stats = self.method.train_step(x, y, idx, epoch)
        finite = bool(stats.pop("finite", 1.0) and math.isfinite(stats.get("loss", 0.0)))
        if finite:
            for k, v in stats.items():
                self.sums[k] = self.sums.get(k, 0.0) + float(v)
        return finite

    def progress(self, done: int, total: int) -> None:
        epoch = (done - 1) // self.train_stream.per_epoch
        self.ctx.progress(done, total, f"{self.cfg.method} epoch {epoch + 1}/{self.cfg.epochs}")

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        self.method.end_epoch(epoch)
        steps = self.train_stream.per_epoch
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": self.cfg.lr * lr_factor(self.cfg, epoch),
                                  "skipped_steps": self.guard.skipped}
        record.update({f"train_{k}": v / max(steps, 1) for k, v in self.sums.items()})
        record.update(self.method.epoch_diagnostics(clean_mask_of(self.splits.train)))
        for name, model in self.method.eval_models().items():
            acc, _ = evaluate(model, self.splits.test, self.splits.num_classes, self.device, self.cfg.eval_batch_size)
            record["test_acc" if name == "main" else f"test_acc_{name}"] = acc
        record["time_s"] = round(time.perf_counter() - self.t0, 2)
        self.sums = {}
        return record

    def stop_asked(self) -> bool:
        asked = stop_requested() is not None
        if self.reduce is not None:  # launched processes stop together (a lone one would hang the others)
            flag = torch.tensor([float(asked)], device=self.device)
            self.reduce([flag])
            asked = float(flag) > 0
        return asked

    def save(self, position: Position) -> None:
        """The position before ``position``: everything a resumed run needs to continue bit for bit."""
        method = self.method
        self.ctx.save_checkpoint({
            "epoch": position.epoch, "step": position.step, "skipped": self.guard.skipped,
            "wall_s": time.perf_counter() - self.t0, "bad_in_row": self.guard.run, "sums": dict(self.sums),
            "meta_epoch": self.meta_stream.epoch, "meta_pos": self.meta_stream.pos,
            "modules": {n: m.state_dict() for n, m in method.modules().items()},
            "optimizers": {n: o.state_dict() for n, o in method.optimizers().items()},
            "extra": method.extra_state(), "rng": rng_state(),
            "weight_log": getattr(getattr(method, "weight_log", None), "values", None),
            "scaler": method.ctx.grad_scaler.state_dict() if method.ctx.grad_scaler is not None else None,
        })

    def resume(self, state: dict[str, Any]) -> tuple[Position, float]:
        """Load a checkpoint of :meth:`save`; returns its position and the wall time before it."""
        method = self.method
        try:
            for name, module in method.modules().items():
                module.load_state_dict(state["modules"][name])
            for name, opt in method.optimizers().items():
                opt.load_state_dict(state["optimizers"][name])
            method.load_extra_state(state["extra"])
            if getattr(method, "weight_log", None) is not None and state.get("weight_log") is not None:
                method.weight_log.values.copy_(state["weight_log"])  # the diagnostics' latest weights
            if method.ctx.grad_scaler is not None and state.get("scaler"):
                method.ctx.grad_scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
            start = Position(int(state["epoch"]), int(state["step"]))
            self.guard.skipped, wall_before = int(state["skipped"]), float(state["wall_s"])
            self.guard.run = int(state.get("bad_in_row", 0))
            self.sums = {k: float(v) for k, v in state.get("sums", {}).items()}
            self.meta_stream.epoch, self.meta_stream.pos = int(state["meta_epoch"]), int(state["meta_pos"])
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
            what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0][:120]
            raise CheckpointError(
                f"checkpoint {self.ctx.checkpoint_path} does not match this run ({what}); "
                "delete it or rerun with --force to start over"
            ) from None
        self.ctx.truncate_metrics(start.epoch)
        self.ctx.log(f"resumed at epoch {start.epoch} step {start.step}")
        return start, wall_before


def _final_metrics(method: DRMethod, splits, device, batch_size: int, skipped: int) -> dict[str, Any]:
    """The trained models' test accuracies, the main one's confusion matrix, the skipped steps and
    the method's summary."""
    metrics: dict[str, Any] = {}
    per_class = None
    for name, model in method.eval_models().items():
        acc, conf = evaluate(model, splits.test, splits.num_classes, device, batch_size)
        metrics["test_acc" if name == "main" else f"test_acc_{name}"] = acc
        if name == "main":
            per_class = conf
    metrics["confusion"] = per_class.tolist()
    metrics["skipped_steps"] = skipped
    if hasattr(method, "summary"):
        clean = getattr(splits.train, "clean_labels", None)
        mask = (clean == splits.train.labels).cpu() if clean is not None else None
        metrics.update(method.summary(mask))
    return metrics
