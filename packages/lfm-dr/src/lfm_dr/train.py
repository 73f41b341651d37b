"""The one training loop every DR method shares: data order, lr schedule, evaluation,
checkpoints (resume at any step), a graceful stop on SIGTERM/SIGINT, and guards against
non-finite losses."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lfm_core.errors import check_choice, CheckpointError, NonFiniteError, UsageError
from lfm_core.registries import METHODS, MODELS
from lfm_core.runtime import (
    all_reduce_mean, compile_module, process_accelerator, rng_state, seed_everything, set_rng_state,
)
from lfm_core.stopping import inject_test_stop, stop_error, stop_on_signals, stop_requested
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
    device = device_of(cfg)
    # launched as several processes (accelerate launch / torchrun): each takes its shard of every
    # training batch, the meta batch is shared, and the solver averages gradients and
    # hypergradients explicitly (DDP has no double backward); the same seed keeps models equal
    acc = process_accelerator(device)
    world, rank = (acc.num_processes, acc.process_index) if acc is not None else (1, 0)
    if world > 1:
        if cfg.method not in MULTI_PROCESS_METHODS:
            raise UsageError(f"method {cfg.method!r} runs in one process; of the DR methods only "
                             f"{', '.join(MULTI_PROCESS_METHODS)} split their batches across the {world} "
                             "launched processes (run it in one process: without torchrun or accelerate launch)")
        if device.type == "cuda":
            device = acc.device
    seed_everything(seed)
    reduce = all_reduce_mean(acc)
    method, train_stream, meta_stream = build_method(cfg, splits, seed, device, reduce, log=ctx.log)
    scheduled = {name: opt for name, opt in method.optimizers().items() if name in method.scheduled}
    base_lr = {name: [g["lr"] for g in opt.param_groups] for name, opt in scheduled.items()}
    start_epoch, start_step, bad_in_row, skipped, wall_before = 0, 0, 0, 0, 0.0
    start_sums: dict[str, float] = {}  # the running train_* sums of a mid-epoch position

    state = ctx.load_checkpoint()
    if state is not None:
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
            start_epoch, start_step = int(state["epoch"]), int(state["step"])
            skipped, wall_before = int(state["skipped"]), float(state["wall_s"])
            bad_in_row = int(state.get("bad_in_row", 0))
            start_sums = {k: float(v) for k, v in state.get("sums", {}).items()}
            meta_stream.epoch, meta_stream.pos = int(state["meta_epoch"]), int(state["meta_pos"])
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
            what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0][:120]
            raise CheckpointError(
                f"checkpoint {ctx.checkpoint_path} does not match this run ({what}); "
                "delete it or rerun with --force to start over"
            ) from None
        ctx.truncate_metrics(start_epoch)
        ctx.log(f"resumed at epoch {start_epoch} step {start_step}")

    def save(epoch: int, step: int, sums: dict[str, float]) -> None:
        """The position before (epoch, step): everything a resumed run needs to continue bit for bit."""
        ctx.save_checkpoint({
            "epoch": epoch, "step": step, "skipped": skipped, "wall_s": time.perf_counter() - t0,
            "bad_in_row": bad_in_row, "sums": dict(sums),
            "meta_epoch": meta_stream.epoch, "meta_pos": meta_stream.pos,
            "modules": {n: m.state_dict() for n, m in method.modules().items()},
            "optimizers": {n: o.state_dict() for n, o in method.optimizers().items()},
            "extra": method.extra_state(), "rng": rng_state(),
            "weight_log": getattr(getattr(method, "weight_log", None), "values", None),
            "scaler": method.ctx.grad_scaler.state_dict() if method.ctx.grad_scaler is not None else None,
        })

    def stop_here(epoch: int, step: int, sums: dict[str, float]) -> None:
        asked = stop_requested() is not None
        if reduce is not None:  # launched processes stop together (a lone one would hang the others)
            flag = torch.tensor([float(asked)], device=device)
            reduce([flag])
            asked = float(flag) > 0
        if asked:
            save(epoch, step, sums)
            ctx.log(f"stopped by a signal at epoch {epoch} step {step}; checkpoint saved")
            raise stop_error(f"at epoch {epoch} step {step}")

    steps = train_stream.per_epoch
    total_steps = cfg.epochs * steps
    t0 = time.perf_counter() - wall_before
    with stop_on_signals():
        for epoch in range(start_epoch, cfg.epochs):
            factor = lr_factor(cfg, epoch)
            for name, opt in scheduled.items():
                for group, lr in zip(opt.param_groups, base_lr[name]):
                    group["lr"] = lr * factor
            first = start_step if epoch == start_epoch else 0
            sums: dict[str, float] = dict(start_sums) if epoch == start_epoch else {}
            for step in range(first, steps):
                stop_here(epoch, step, sums)  # a signal during the previous step lands here
                idx = train_stream.batch_indices(epoch, step)[rank::world]
                x, y, idx = gather(splits.train, idx, device, cfg.augment)
                inject_test_stop(f"dr:{epoch}:{step}:mid")
                with autocast(cfg, device):
                    stats = method.train_step(x, y, idx, epoch)
                finite = stats.pop("finite", 1.0) and math.isfinite(stats.get("loss", 0.0))
                if not finite:
                    skipped += 1
                    bad_in_row += 1
                    ctx.log(f"non-finite loss or hypergradient at epoch {epoch} step {step}; step skipped")
                    if bad_in_row >= MAX_BAD_STEPS:
                        raise NonFiniteError(
                            f"{bad_in_row} non-finite steps in a row at epoch {epoch} step {step} (method "
                            f"{cfg.method}, lr {cfg.lr * factor:g}); no result was written and the same settings diverge "
                            "again: change the learning rate, the mixed precision or the seed"
                        )
                    continue
                bad_in_row = 0
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                ctx.progress(epoch * steps + step + 1, total_steps, f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}")
                inject_test_stop(f"dr:{epoch}:{step}:end")
            method.end_epoch(epoch)
            record: dict[str, Any] = {"epoch": epoch + 1, "lr": cfg.lr * factor, "skipped_steps": skipped}
            record.update({f"train_{k}": v / max(steps, 1) for k, v in sums.items()})
            inject_test_stop(f"dr:{epoch}:eval")
            record.update(method.epoch_diagnostics(clean_mask_of(splits.train)))
            for name, model in method.eval_models().items():
                acc, _ = evaluate(model, splits.test, splits.num_classes, device, cfg.eval_batch_size)
                record["test_acc" if name == "main" else f"test_acc_{name}"] = acc
            record["time_s"] = round(time.perf_counter() - t0, 2)
            ctx.log_metrics(record)
            save(epoch + 1, 0, {})
            stop_here(epoch + 1, 0, {})  # a signal during the evaluation: the epoch is done and saved

    metrics: dict[str, Any] = {}
    per_class = None
    for name, model in method.eval_models().items():
        acc, conf = evaluate(model, splits.test, splits.num_classes, device, cfg.eval_batch_size)
        metrics["test_acc" if name == "main" else f"test_acc_{name}"] = acc
        if name == "main":
            per_class = conf
    metrics["confusion"] = per_class.tolist()
    metrics["skipped_steps"] = skipped
    if hasattr(method, "summary"):
        clean = getattr(splits.train, "clean_labels", None)
        mask = (clean == splits.train.labels).cpu() if clean is not None else None
        metrics.update(method.summary(mask))
    metrics["_resumed_wall_s"] = wall_before
    return metrics
