"""LFM-NAS (paper eq. 8) as a :class:`lfm_core.solver.TriLevelProblem`, and the architect.

Upper-level variables (names of the solver's ``upper`` dict):

* ``alpha_normal`` / ``alpha_reduce``: the architecture B, shared by W1 and W2;
* ``r``: one coefficient per *validation example*, indexed by the example's data-set index
  (full length ``n_val``; a batch gathers ``r[val_idx]``), initialised to ones;
* ``V.<name>``: the encoder's parameters (absent in the PS variant, whose encoder is W1's trunk).

Losses (all networks evaluated with the alphas of ``upper``):

* ``loss1 = CE(W1; train batch)``
* ``weights = lfm_weights(V(x_tr2), V(x_val), y_tr2, y_val, u=CE_i(W1'; val), r[val_idx])``
* ``loss2 = mean_i a_i CE_i(W2; train batch 2)``
* ``loss3 = CE(W2'; val batch)``

Variants: ``two`` (two supernets), ``single`` (W2 := W1: the same module is passed as both
learners and the solver starts W2's step at W1'), ``ps`` (a :class:`~lfm_nas.spaces.PSNetwork`
used as both learners: W1 = trunk + head 1, W2 = trunk + head 2, V = W1's trunk).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lfm_core.errors import check_choice, UsageError
from lfm_core.hypergradient.steps import SkippedStep
from lfm_core.registries import SEARCH_SPACES, SIMILARITIES
from lfm_core.solver import StepStats, TriLevelSolver, check_engine
from lfm_core.weighting import ABLATIONS, lfm_weights
from lfm_nas.genotypes import Genotype
from lfm_nas.operations import prepare_bn_for_engine
from lfm_nas.spaces import PSNetwork

VARIANTS = ("two", "single", "ps")
PS_FEATURES = ("grad", "detached")

Batch = Sequence[Tensor]


def model_alphas(upper: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The ``{"normal", "reduce"}`` dict a supernet's forward takes, from upper-level names."""
    return {"normal": upper["alpha_normal"], "reduce": upper["alpha_reduce"]}


def check_variant(variant: str) -> str:
    check_choice("LFM variant", variant, VARIANTS)
    return variant


def check_choices(variant: str, similarity: str, drop: str, ps_features: str) -> None:
    """The problem's named choices (the similarity against the registry, so a plug-in one works)."""
    check_variant(variant)
    check_choice("ps_features", ps_features, PS_FEATURES)
    SIMILARITIES.get(similarity)
    check_choice("ablation", drop, ABLATIONS)


def check_networks(variant: str, w1: nn.Module, w2: nn.Module | None, encoder: nn.Module | None) -> nn.Module:
    """The learners and encoder a variant takes; returns W2 (W1 itself for 'single' and 'ps')."""
    if variant == "two":
        if w2 is None or w2 is w1:
            raise UsageError("the 'two' variant needs two distinct supernets w1 and w2")
    elif w2 is not None and w2 is not w1:
        raise UsageError(f"the {variant!r} variant uses one module as both learners (leave w2 None)")
    if variant == "ps":
        if not isinstance(w1, PSNetwork):
            raise UsageError("the 'ps' variant needs a PSNetwork (shared trunk, two heads)")
        if encoder is not None:
            raise UsageError("the 'ps' variant uses W1's trunk as the encoder; pass encoder=None")
    elif encoder is None:
        raise UsageError(f"the {variant!r} variant needs an encoder V")
    return w1 if w2 is None else w2


def _features(f: Tensor) -> Tensor:
    """Encoder output as ``[N, D]`` (spatial maps are averaged)."""
    return f.flatten(2).mean(2) if f.dim() > 2 else f


class LFMNASProblem:
    """One LFM-NAS step with its batches bound (see the module docstring).

    ``batch_tr`` is ``(x, y[, idx])`` for W1's step, ``batch_tr2`` (default: the same batch)
    for W2's weighted step, ``batch_val`` is ``(x, y, idx)`` with the examples' data-set
    indices into ``r``.
    """

    def __init__(self, w1: nn.Module, w2: nn.Module, encoder: nn.Module | None, batch_tr: Batch, batch_val: Batch,
                 batch_tr2: Batch | None = None, variant: str = "two", similarity: str = "dot", drop: str = "none",
                 encoder_input: Callable[[Tensor], Tensor] | None = None, ps_features: str = "grad"):
        check_choices(variant, similarity, drop, ps_features)
        check_networks(variant, w1, w2, encoder)
        self.variant, self.ps_features = variant, ps_features
        if len(batch_val) < 3:
            raise UsageError("the validation batch must carry the examples' data-set indices: (x, y, idx)")
        self.w1, self.w2, self.encoder = w1, w2, encoder
        self.x_tr, self.y_tr = batch_tr[0], batch_tr[1]
        b2 = batch_tr if batch_tr2 is None else batch_tr2
        self.x_tr2, self.y_tr2 = b2[0], b2[1]
        self.x_val, self.y_val, self.val_idx = batch_val[0], batch_val[1], batch_val[2]
        self.similarity, self.drop = similarity, drop
        self.encoder_input = encoder_input

    # -- networks ----------------------------------------------------------------------
    def _logits(self, module: nn.Module, params: Mapping[str, Tensor], x: Tensor, upper, head: int) -> Tensor:
        alphas = model_alphas(upper)
        if self.variant == "ps":
            return functional_call(module, dict(params), (x, alphas), {"head": head})
        return functional_call(module, dict(params), (x, alphas))

    def _encode(self, upper: Mapping[str, Tensor], x: Tensor) -> Tensor:
        params = {k[2:]: v for k, v in upper.items() if k.startswith("V.")}
        if self.encoder_input is not None:
            x = self.encoder_input(x)
        return _features(functional_call(self.encoder, params, (x,)))

    # -- the four functions of the TriLevelProblem ---------------------------------------
    def loss1(self, w1: Mapping[str, Tensor], upper: Mapping[str, Tensor]) -> Tensor:
        return F.cross_entropy(self._logits(self.w1, w1, self.x_tr, upper, 1), self.y_tr)

    def _passes(self, w1: Mapping[str, Tensor], upper: Mapping[str, Tensor]) -> list[Callable[[], dict[str, Tensor]]]:
        """The network passes behind the weights, each giving some of ``u``, ``f_tr``, ``f_val``."""
        alphas = model_alphas(upper)
        if self.variant == "ps":
            def val_pass() -> dict[str, Tensor]:
                # V is W1's trunk: features and mistakes both come from one trunk pass over W1'
                f_val = functional_call(self.w1, dict(w1), (self.x_val, alphas), {"head": 0})
                logits = F.linear(f_val, w1["head1.weight"], w1["head1.bias"])
                return {"u": F.cross_entropy(logits, self.y_val, reduction="none"), "f_val": f_val}

            def train_pass() -> dict[str, Tensor]:
                return {"f_tr": functional_call(self.w1, dict(w1), (self.x_tr2, alphas), {"head": 0})}

            return [val_pass, train_pass]

        def mistakes() -> dict[str, Tensor]:
            logits = self._logits(self.w1, w1, self.x_val, upper, 1)
            return {"u": F.cross_entropy(logits, self.y_val, reduction="none")}

        return [mistakes, lambda: {"f_tr": self._encode(upper, self.x_tr2)},
                lambda: {"f_val": self._encode(upper, self.x_val)}]

    def _lfm_weights(self, inputs: Mapping[str, Tensor], upper: Mapping[str, Tensor]) -> Tensor:
        r = upper["r"][self.val_idx.to(upper["r"].device)]
        return lfm_weights(inputs["f_tr"], inputs["f_val"], self.y_tr2, self.y_val, inputs["u"], r,
                           self.similarity, self.drop)

    def weights(self, w1: Mapping[str, Tensor], upper: Mapping[str, Tensor]) -> Tensor:
        inputs: dict[str, Tensor] = {}
        for run_pass in self._passes(w1, upper):
            inputs.update(run_pass())
        if self.variant == "ps" and self.ps_features == "detached":
            # cheaper: the trunk's features as constants (no graph kept through them)
            inputs["f_tr"], inputs["f_val"] = inputs["f_tr"].detach(), inputs["f_val"].detach()
        if not torch.is_grad_enabled():  # the solver's graph-free pass: weights_vjp reuses it
            self._inputs = inputs
        return self._lfm_weights(inputs, upper)

    def weights_vjp(self, w1: Mapping[str, Tensor], upper: Mapping[str, Tensor], da: Tensor) -> dict[str, Tensor]:
        """``d<da, a>/d(w1, upper)`` with one network graph alive at a time: the gradients of the
        weights with respect to their inputs (u, f_tr, f_val) first, then each pass rebuilt with
        its graph and differentiated on its own (the solver's ``recompute_weights``)."""
        inputs = getattr(self, "_inputs", None)
        if inputs is None:
            with torch.no_grad():
                self.weights(w1, upper)
            inputs = self._inputs
        leaves = {k: v.detach().requires_grad_() for k, v in inputs.items()}
        a = self._lfm_weights(leaves, upper)
        names = ["r", *leaves]
        grads = torch.autograd.grad(a, [upper["r"], *leaves.values()], da, allow_unused=True)
        g = dict(zip(names, grads))
        out: dict[str, Tensor] = {"r": g["r"]} if g["r"] is not None else {}
        params = {**dict(w1), **dict(upper)}
        frozen = {"f_tr", "f_val"} if self.variant == "ps" and self.ps_features == "detached" else set()
        for run_pass in self._passes(w1, upper):
            outs = {k: v for k, v in run_pass().items() if k not in frozen and g.get(k) is not None}
            if not outs:
                continue
            got = torch.autograd.grad(list(outs.values()), list(params.values()), [g[k] for k in outs],
                                      allow_unused=True)
            for name, grad in zip(params, got):
                if grad is not None:
                    out[name] = out[name] + grad if name in out else grad
        return out

    def loss2(self, w2: Mapping[str, Tensor], a: Tensor, upper: Mapping[str, Tensor]) -> Tensor:
        ce = F.cross_entropy(self._logits(self.w2, w2, self.x_tr2, upper, 2), self.y_tr2, reduction="none")
        return (a * ce).mean()

    def loss3(self, w2: Mapping[str, Tensor], upper: Mapping[str, Tensor]) -> Tensor:
        return F.cross_entropy(self._logits(self.w2, w2, self.x_val, upper, 2), self.y_val)


@dataclass(frozen=True)
class ArchitectSettings:
    """The choices and hyperparameters of :class:`LFMArchitect`, checked on construction.

    Defaults follow the DARTS protocol (docs/ARCHITECTURE.md): W1/W2 SGD lr 0.025, momentum 0.9,
    wd 3e-4, grad clip 5 (the cosine schedule is the caller's: :meth:`LFMArchitect.set_w_lr`);
    alphas Adam 3e-4, betas (0.5, 0.999), wd 1e-3; V and r Adam 1e-2 (param groups of one Adam);
    the alphas start at ``alpha_scale`` times a normal sample.
    ``recompute_weights`` (default): the weights a are first computed without a graph and, for
    the hypergradient, each of their network passes (W1' on the validation batch, the encoder or
    PS trunk on each batch) is rebuilt and differentiated on its own (``weights_vjp``), so no two
    network graphs are alive at once (one more forward per pass).
    """

    variant: str = "two"
    engine: str = "exact"
    similarity: str = "dot"
    drop: str = "none"
    ps_features: str = "grad"
    encoder_input: Callable[[Tensor], Tensor] | None = None
    alpha_scale: float = 1e-3
    w_lr: float = 0.025
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    arch_lr: float = 3e-4
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    encoder_lr: float = 1e-2
    r_lr: float = 1e-2
    grad_clip: float | None = 5.0
    fd_eps: float | None = None  # None: lfm_core.hypergradient.default_fd_eps (the search passes DARTS's 0.01)
    recompute_weights: bool = True

    def __post_init__(self) -> None:
        check_choices(self.variant, self.similarity, self.drop, self.ps_features)
        check_engine(self.engine)


class LFMArchitect:
    """W1, W2, the upper variables, their optimisers and the tri-level solver for LFM-NAS.

    ``w2`` is the second supernet of the 'two' variant (None for 'single' and 'ps', which use
    W1 as both learners); ``encoder`` is V (None for 'ps', whose encoder is W1's trunk);
    ``n_val`` the size of the validation set (the length of r); ``alphas`` the starting
    architecture (default: drawn from W1's ``new_alphas``).
    """

    def __init__(self, w1: nn.Module, w2: nn.Module | None = None, encoder: nn.Module | None = None, *,
                 n_val: int, settings: ArchitectSettings = ArchitectSettings(),
                 alphas: Mapping[str, Tensor] | None = None):
        self.settings = settings
        self.variant = settings.variant
        w2 = check_networks(settings.variant, w1, w2, encoder)
        self.w1, self.w2, self.encoder = w1, w2, encoder
        # the exact engine differentiates JVPs of the supernets: composite batch norm there
        for m in {id(w1): w1, id(w2): w2}.values():
            prepare_bn_for_engine(m, settings.engine == "exact")
        p0 = next(w1.parameters())
        dev, dt = p0.device, p0.dtype

        # the upper-level variables
        if alphas is None:
            alphas = w1.new_alphas(settings.alpha_scale)
        self.upper: dict[str, Tensor] = {
            "alpha_normal": alphas["normal"].detach().clone().to(dev, dt).requires_grad_(),
            "alpha_reduce": alphas["reduce"].detach().clone().to(dev, dt).requires_grad_(),
            "r": torch.ones(int(n_val), device=dev, dtype=dt, requires_grad=True),
        }
        enc_params = []
        if encoder is not None:
            for k, p in encoder.named_parameters():
                if p.requires_grad:
                    self.upper[f"V.{k}"] = p  # the encoder's own parameters: it stays in sync
                    enc_params.append(p)
        self._make_optimizers(enc_params)
        self.solver = TriLevelSolver(w1, w2, self.upper, self.opt1, self.opt2, self.upper_optimizer,
                                     engine=settings.engine, fd_eps=settings.fd_eps,
                                     modules=[encoder] if encoder is not None else [],
                                     grad_clip=settings.grad_clip, recompute_weights=settings.recompute_weights)

    def _make_optimizers(self, enc_params: list[Tensor]) -> None:
        s = self.settings
        sgd = dict(lr=s.w_lr, momentum=s.w_momentum, weight_decay=s.w_weight_decay)
        if s.variant == "ps":
            self.opt1 = torch.optim.SGD(list(self.w1.learner_parameters(1).values()), **sgd)
            self.opt2 = torch.optim.SGD(list(self.w1.learner_parameters(2).values()), **sgd)
        else:
            self.opt1 = torch.optim.SGD(self.w1.parameters(), **sgd)
            self.opt2 = torch.optim.SGD(self.w2.parameters(), **sgd)
        groups = [{"params": [self.upper["alpha_normal"], self.upper["alpha_reduce"]], "lr": s.arch_lr,
                   "betas": tuple(s.arch_betas), "weight_decay": s.arch_weight_decay}]
        if enc_params:
            groups.append({"params": enc_params, "lr": s.encoder_lr, "betas": (0.9, 0.999), "weight_decay": 0.0})
        groups.append({"params": [self.upper["r"]], "lr": s.r_lr, "betas": (0.9, 0.999), "weight_decay": 0.0})
        self.upper_optimizer = torch.optim.Adam(groups)

    # -- construction from a registered search space ------------------------------------
    @classmethod
    def from_space(cls, space: str = "darts", space_kwargs: Mapping[str, Any] | None = None, *,
                   variant: str = ArchitectSettings.variant, encoder: nn.Module | None = None, device: Any = None,
                   n_val: int,
                   alphas: Mapping[str, Tensor] | None = None, **settings: Any) -> "LFMArchitect":
        """Builds W1 (and W2) from ``SEARCH_SPACES[space](**space_kwargs)`` on ``device`` (the
        encoder is moved there too); ``settings`` are the fields of :class:`ArchitectSettings`."""
        for name in settings:
            check_choice("architect setting", name, [f.name for f in fields(ArchitectSettings)])
        checked = ArchitectSettings(variant=variant, **settings)
        space_kwargs = dict(space_kwargs or {})
        factory = SEARCH_SPACES.get(space)
        if variant == "ps":
            num_classes = space_kwargs.pop("num_classes", 10)
            w1 = PSNetwork(factory(**space_kwargs, num_classes=None), num_classes)
            w2 = None
        else:
            w1 = factory(**space_kwargs)
            w2 = factory(**space_kwargs) if variant == "two" else None
        if device is not None:
            w1 = w1.to(device)
            w2 = w2.to(device) if w2 is not None else None
            encoder = encoder.to(device) if encoder is not None else None
        return cls(w1, w2, encoder, n_val=n_val, settings=checked, alphas=alphas)

    # -- one step -------------------------------------------------------------------------
    def make_problem(self, batch_tr: Batch, batch_val: Batch, batch_tr2: Batch | None = None) -> LFMNASProblem:
        s = self.settings
        return LFMNASProblem(self.w1, self.w2, self.encoder, batch_tr, batch_val, batch_tr2, s.variant,
                             s.similarity, s.drop, s.encoder_input, s.ps_features)

    def step(self, batch_tr: Batch, batch_val: Batch, batch_tr2: Batch | None = None,
             update_upper: bool = True) -> StepStats:
        """Algorithm 1, one iteration: W1 step, W2 step on the LFM weights, then (B, V, r)."""
        return self.solver.step(self.make_problem(batch_tr, batch_val, batch_tr2), update_upper=update_upper)

    def warmup_step(self, batch_tr: Batch, batch_tr2: Batch | None = None) -> float | None:
        """W1 and W2 steps on the plain cross-entropy (all ``a_i = 1``), no upper update: the
        warm-up before LFM is switched on. Returns W2's loss (None: a loss was not finite and the
        step was skipped, as :meth:`step` skips one)."""
        alphas = self.alphas
        b2 = batch_tr if batch_tr2 is None else batch_tr2
        done: tuple[Tensor, ...] = ()
        try:
            for which, (opt, net, batch) in enumerate(((self.opt1, self.w1, batch_tr), (self.opt2, self.w2, b2)), 1):
                kw = {"head": which} if self.variant == "ps" else {}
                loss = F.cross_entropy(net(batch[0], alphas, **kw), batch[1])
                # the optimiser's own parameters: a PS learner trains the trunk and its own head
                self.solver.real_step(opt, loss, [p for g in opt.param_groups for p in g["params"]], done=done,
                                      last=which == 2)
                done = (*done, loss)
        except SkippedStep:
            return None
        return float(done[-1].detach())

    # -- accessors ------------------------------------------------------------------------
    @property
    def alphas(self) -> dict[str, Tensor]:
        """Detached ``{"normal", "reduce"}`` for a supernet forward or genotype derivation."""
        return {k: v.detach() for k, v in model_alphas(self.upper).items()}

    @property
    def r(self) -> Tensor:
        return self.upper["r"].detach()

    @property
    def w_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt1, self.opt2]

    def set_w_lr(self, lr: float) -> None:
        for opt in self.w_optimizers:
            for g in opt.param_groups:
                g["lr"] = lr

    def genotype(self) -> Genotype:
        return self.w1.genotype(self.alphas)

    def networks(self) -> dict[str, nn.Module]:
        """The modules to evaluate: W1 and W2 (the same module for 'single'/'ps')."""
        return {"w1": self.w1, "w2": self.w2}


def build_lfm_search(space_kwargs: Mapping[str, Any], variant: str = ArchitectSettings.variant,
                     encoder: nn.Module | None = None, n_val: int | None = None,
                     engine: str = ArchitectSettings.engine, space: str = "darts", **kw: Any):
    """``(solver, make_problem)`` for LFM-NAS on a registered search space (see :class:`LFMArchitect`).

    ``solver.step(make_problem(batch_tr, batch_val))`` runs one iteration of Algorithm 1;
    ``solver.upper`` holds the alphas (``alpha_normal``/``alpha_reduce``), ``r`` and ``V.*``.
    """
    if not n_val:
        raise UsageError("build_lfm_search needs n_val, the size of the validation set (length of r)")
    arch = LFMArchitect.from_space(space, space_kwargs, variant=variant, encoder=encoder, n_val=n_val,
                                   engine=engine, **kw)
    return arch.solver, arch.make_problem
