"""The interface between the DR trainer and a data-reweighting method, and shared pieces.

The trainer builds a :class:`DRContext`, constructs a method as ``Cls(ctx)``, calls
``train_step`` once per training mini-batch and ``end_epoch`` after each epoch, scales the
learning rate of the optimisers named in ``scheduled``, checkpoints ``modules()``,
``optimizers()`` and ``extra_state()``, evaluates ``eval_models()["main"]`` and adds
``epoch_diagnostics(clean_mask)`` to each epoch's metrics.

Shared helpers (used by the baselines and available to other methods):

* :func:`weighted_ce` / :func:`normalize_weights`: the weighted cross-entropy;
* :func:`virtual_step`: one differentiable (unrolled) SGD step of a classifier with a
  weighted training loss, through ``torch.func.functional_call`` (no module copies) and
  with batch-norm running statistics frozen; :func:`meta_loss` evaluates the clean
  meta batch at the virtual weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lfm_core.errors import UsageError
from lfm_core.solver import Params, frozen_bn_stats, named_params

__all__ = [
    "DRContext",
    "DRMethod",
    "SingleModelMethod",
    "make_sgd",
    "sgd_step",
    "ce_per_example",
    "weighted_ce",
    "weighted_sum",
    "normalize_weights",
    "virtual_step",
    "meta_loss",
]


@dataclass
class DRContext:
    model_fn: Callable[[], nn.Module]  # a fresh model on the right device
    num_classes: int
    class_counts: list[int]  # per-class counts of the (noisy/imbalanced) training set
    n_train: int
    n_meta: int
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    epochs: int = 100
    next_meta: Callable[[], tuple[Tensor, Tensor, Tensor]] | None = None  # clean meta batch (x, y, idx)
    device: torch.device = torch.device("cpu")
    options: dict[str, Any] = field(default_factory=dict)  # method-specific hyper-parameters
    grad_scaler: torch.amp.GradScaler | None = None  # fp16 autocast: loss scaling for the real steps
    reduce: Callable[[list[Tensor]], None] | None = None  # several processes: averages gradients in place
    compile: bool = False  # torch.compile the method's own networks too (model_fn's are compiled already)
    log: Callable[[str], None] | None = None  # a line for the run's log (None: not logged)

    def meta_batch(self, like: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The next clean meta batch, moved to ``like``'s device (or ``device``)."""
        if self.next_meta is None:
            raise UsageError("this method needs a clean meta (validation) set, but none was given")
        x, y, idx = self.next_meta()
        dev = like.device if like is not None else self.device
        return x.to(dev), y.to(dev), idx


def make_sgd(params, ctx: DRContext) -> torch.optim.SGD:
    """SGD with the context's lr, momentum, weight decay and Nesterov flag."""
    return torch.optim.SGD(
        params, lr=ctx.lr, momentum=ctx.momentum, weight_decay=ctx.weight_decay, nesterov=ctx.nesterov
    )


def sgd_step(opt: torch.optim.Optimizer, loss: Tensor, scaler: torch.amp.GradScaler | None = None) -> bool:
    """Backward + step; a non-finite loss is skipped (returns False) for the trainer to count.
    With a (fp16) ``scaler`` the loss is scaled and an overflowing step skipped by the scaler."""
    opt.zero_grad(set_to_none=True)
    if not bool(torch.isfinite(loss.detach())):
        return False
    if scaler is None or not scaler.is_enabled():
        loss.backward()
        opt.step()
        return True
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return True


# ------------------------------------------------------------------------------------
# losses
# ------------------------------------------------------------------------------------
def ce_per_example(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def weighted_ce(logits: Tensor, y: Tensor, weights: Tensor, reduction: str = "mean") -> Tensor:
    """``sum_i w_i CE_i`` divided by the batch size (``"mean"``) or not (``"sum"``)."""
    return weighted_sum(ce_per_example(logits, y), weights, reduction)


def weighted_sum(losses: Tensor, weights: Tensor, reduction: str = "mean") -> Tensor:
    total = (weights * losses).sum()
    if reduction == "mean":
        return total / losses.numel()
    if reduction == "sum":
        return total
    raise ValueError(f"unknown reduction {reduction!r}")


def normalize_weights(w: Tensor) -> Tensor:
    """``w / sum(w)``, or ``w`` unchanged when the sum is zero (differentiable, NaN-free)."""
    s = w.sum()
    return w / torch.where(s > 0, s, torch.ones_like(s))


# ------------------------------------------------------------------------------------
# the virtual (unrolled) step shared by L2RW and Meta-Weight-Net
# ------------------------------------------------------------------------------------
def virtual_step(
    model: nn.Module, x: Tensor, y: Tensor, weigh: Callable[[Tensor], Tensor], lr: float,
    params: Params | None = None,
) -> Params:
    """``W' = W - lr * grad_W weigh(l(W))`` with the graph kept (``create_graph=True``).

    ``weigh`` maps the per-example training losses ``l`` to the scalar weighted loss; the
    weights inside it may carry gradients (L2RW's eps, Meta-Weight-Net's parameters), so
    ``W'`` is differentiable in them. Plain SGD (no momentum or weight decay), as in the
    official L2RW / MW-Net code. Batch-norm running statistics are left untouched.
    """
    params = named_params(model) if params is None else params
    with frozen_bn_stats(model):
        losses = ce_per_example(functional_call(model, params, (x,)), y)
    loss = weigh(losses)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True, allow_unused=True)
    return {k: p if g is None else p - lr * g for (k, p), g in zip(params.items(), grads)}


def meta_loss(model: nn.Module, params: Params, x: Tensor, y: Tensor) -> Tensor:
    """Mean CE on a (clean) batch at the given parameters, batch-norm statistics frozen."""
    with frozen_bn_stats(model):
        return F.cross_entropy(functional_call(model, params, (x,)), y)


# ------------------------------------------------------------------------------------
# method interface
# ------------------------------------------------------------------------------------
class DRMethod:
    """Base class of the data-reweighting methods (see the module docstring)."""

    name: str = ""
    scheduled: tuple[str, ...] = ()
    # every option the method reads and its default, in one place per method (a run's config
    # records them all); None: not declared
    DEFAULTS: dict[str, Any] | None = None
    # the option names ``lfm_dr.fit`` accepts (the keys of DEFAULTS); None: not checked
    known_options: tuple[str, ...] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("DEFAULTS") is not None and "known_options" not in cls.__dict__:
            cls.known_options = tuple(cls.DEFAULTS)

    def __init__(self, ctx: DRContext):
        self.ctx = ctx

    @property
    def options(self) -> dict[str, Any]:
        """The method's options: its DEFAULTS, then what the run gave."""
        return {**(self.DEFAULTS or {}), **self.ctx.options}

    def modules(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def extra_state(self) -> dict[str, Tensor]:
        return {}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        pass

    def train_step(self, x: Tensor, y: Tensor, idx: Tensor, epoch: int) -> dict[str, float]:
        raise NotImplementedError

    def eval_models(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def end_epoch(self, epoch: int) -> None:
        pass

    def epoch_diagnostics(self, clean_mask: Tensor | None) -> dict[str, float]:
        """Numbers for this epoch's metrics.jsonl line (e.g. how the weights treat corrupted
        examples: ``clean_mask`` is True where a training label is the clean one)."""
        return {}


class SingleModelMethod(DRMethod):
    """One classifier under the trainer's SGD schedule; subclasses give :meth:`loss`."""

    scheduled = ("model",)
    DEFAULTS: dict[str, Any] | None = {}

    def __init__(self, ctx: DRContext):
        super().__init__(ctx)
        self.model = ctx.model_fn()
        self.opt = make_sgd(self.model.parameters(), ctx)

    @property
    def lr(self) -> float:
        """The classifier's current (scheduled) learning rate."""
        return float(self.opt.param_groups[0]["lr"])

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.opt}

    def eval_models(self) -> dict[str, nn.Module]:
        return {"main": self.model}

    def loss(self, x: Tensor, y: Tensor, idx: Tensor, epoch: int) -> Tensor:
        raise NotImplementedError

    def train_step(self, x: Tensor, y: Tensor, idx: Tensor, epoch: int) -> dict[str, float]:
        self.model.train()
        loss = self.loss(x, y, idx, epoch)
        sgd_step(self.opt, loss, self.ctx.grad_scaler)
        return {"loss": float(loss.detach())}
