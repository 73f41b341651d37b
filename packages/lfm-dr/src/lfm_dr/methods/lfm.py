"""LFM data reweighting (paper eq. 9) on the lfm-core tri-level solver.

B = one weight b_i per training example and r = one coefficient r_j per meta example, both
indexed by the example's data-set index (not its position in the mini-batch); V is an image
encoder. W1 learns from the b-weighted loss, W2 from the a-weighted loss, and (B, V, r)
descend W2's meta loss through both unrolled steps.
"""

from __future__ import annotations

import contextlib
import copy
import time

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from lfm_core.encoders import create_encoder
from lfm_core.errors import UsageError, check_choice
from lfm_core.registries import METHODS
from lfm_core.runtime import compile_module
from lfm_core.solver import ENGINES, EXACT_ENGINES, Params, TriLevelSolver
from lfm_core.weighting import lfm_weights
from lfm_dr.diagnostics import WeightLog, weight_stats
from lfm_dr.methods.base import DRContext, DRMethod, make_sgd

# loss3 (W2's meta loss) does not depend on B, r or V directly, so the first-order hypergradient
# (which drops the terms through the unrolled steps) is exactly zero: the upper level never moves
DR_ENGINES = tuple(e for e in ENGINES if e != "first-order")
# "auto": the faster of the exact engines, timed on the run's first meta step (see pick_engine)
AUTO = "auto"


META_LAYERS = ("all", "last")


def classifier_name(model: torch.nn.Module) -> str:
    """The name of the model's last linear layer (its classifier)."""
    linear = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name]
    if not linear:
        raise UsageError(f"meta_layers='last' needs a final nn.Linear layer; {type(model).__name__} has none")
    return linear[-1]


def classifier_params(model: torch.nn.Module) -> list[str]:
    """Names of the parameters of the model's classifier (``classifier_name``)."""
    head = classifier_name(model)
    return [f"{head}.{name}" for name, _ in model.get_submodule(head).named_parameters()]


def check_dr_engine(engine: str) -> str:
    if engine not in (*DR_ENGINES, AUTO):
        why = " (its hypergradient is exactly zero for data reweighting)" if engine == "first-order" else ""
        raise UsageError(f"engine {engine!r} cannot train LFM-DR{why}. "
                         f"Valid choices: {', '.join((*DR_ENGINES, AUTO))}.")
    return engine

DEFAULTS = {
    "encoder": "resnet18",
    "pretrained": True,
    "encoder_weights": None,
    "engine": "exact",
    "similarity": "dot",
    "drop": "none",
    "variant": "two",  # or "single": W2 := W1
    "lr_b": 0.01,
    "lr_r": 0.01,
    "lr_v": 0.01,
    "b_min": 0.0,
    # the upper variables (b, r, V) descend their hypergradient every k-th step; W1 and W2 train
    # every step, in between with a from the current upper variables (no hypergradient)
    "meta_every": 1,
    # "last": the hypergradient flows through the networks' classifier layer only (a layer-wise
    # approximation in the spirit of FaMUS): cheaper products and meta backward passes
    "meta_layers": "all",
    "normalize_a": False,  # W2's loss sum(a l)/sum(a) instead of the paper's mean(a l) (ablation only)
}


class DRProblem:
    """The four functions of one LFM-DR step with the step's batches bound."""

    def __init__(self, w1, w2, encoder, x, y, idx, xm, ym, jm, similarity: str, drop: str,
                 normalize_a: bool = False, head: str | None = None):
        self.w1, self.w2, self.encoder = w1, w2, encoder
        self.x, self.y, self.idx = x, y, idx
        self.xm, self.ym, self.jm = xm, ym, jm
        self.similarity, self.drop = similarity, drop
        self.normalize_a = normalize_a
        self.last_a: Tensor | None = None  # the batch's weights, for the diagnostics
        # with meta_layers="last": the classifier's name; its input on the training batch is kept
        # from each real step and reused by the products (inside fixed_trunk)
        self.head = head
        self._features: dict[str, Tensor] = {}
        self._reuse = False

    @contextlib.contextmanager
    def fixed_trunk(self):
        """The solver's products with only the classifier moving: reuse the real steps' features."""
        self._reuse = True
        try:
            yield
        finally:
            self._reuse = False

    def _train_logits(self, model: torch.nn.Module, params: Params, slot: str) -> Tensor:
        if self.head is None:
            return functional_call(model, params, (self.x,))
        head = model.get_submodule(self.head)
        if self._reuse and slot in self._features:
            prefix = self.head + "."
            head_params = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
            features = self._features[slot]  # (autocast's low precision is lifted for the products)
            return functional_call(head, head_params, (features.to(next(iter(head_params.values())).dtype),))
        seen: list[Tensor] = []
        hook = head.register_forward_pre_hook(lambda _module, inputs: seen.append(inputs[0]))
        try:
            logits = functional_call(model, params, (self.x,))
        finally:
            hook.remove()
        if not self._reuse and seen:  # the real step's features
            self._features[slot] = seen[-1].detach()
        return logits

    def loss1(self, w1: Params, upper: Params) -> Tensor:
        losses = F.cross_entropy(self._train_logits(self.w1, w1, "w1"), self.y, reduction="none")
        return (upper["b"][self.idx] * losses).mean()

    def weights(self, w1: Params, upper: Params) -> Tensor:
        u = F.cross_entropy(functional_call(self.w1, w1, (self.xm,)), self.ym, reduction="none")
        enc = {k[2:]: v for k, v in upper.items() if k.startswith("V.")}
        feats = functional_call(self.encoder, enc, (torch.cat([self.x, self.xm]),))
        f_tr, f_val = feats[: len(self.x)], feats[len(self.x):]
        a = lfm_weights(f_tr, f_val, self.y, self.ym, u, upper["r"][self.jm], self.similarity, self.drop,
                        offset=upper["c"] if "c" in upper else 0.0)
        self.last_a = a.detach()
        return a

    def loss2(self, w2: Params, a: Tensor, upper: Params) -> Tensor:
        losses = F.cross_entropy(self._train_logits(self.w2, w2, "w2"), self.y, reduction="none")
        if self.normalize_a:  # sum a_i l_i / sum a_i: the step size no longer scales with mean(a)
            return (a * losses).sum() / a.sum().clamp_min(1e-12)
        return (a * losses).mean()

    def loss3(self, w2: Params, upper: Params) -> Tensor:
        return F.cross_entropy(functional_call(self.w2, w2, (self.xm,)), self.ym)


@METHODS.register("lfm")
class LFMReweighting(DRMethod):
    name = "lfm"
    DEFAULTS = DEFAULTS  # every option and its default (a run's config records them all)
    scheduled = ("w1", "w2")

    def __init__(self, ctx: DRContext):
        self.ctx = ctx
        self.opt = self.check_options(ctx.options)
        self.meta_every = self.opt["meta_every"]
        self.steps_done = 0  # counts train steps, so the meta-update steps survive a resume
        self.last_meta_loss = float("nan")
        self.w1 = ctx.model_fn()
        self.w2 = self.w1 if self.opt["variant"] == "single" else ctx.model_fn()
        self.head = classifier_name(self.w1) if self.opt["meta_layers"] == "last" else None
        self.encoder = create_encoder(
            self.opt["encoder"], pretrained=bool(self.opt["pretrained"]), weights=self.opt["encoder_weights"]
        ).to(ctx.device)
        # a pretrained encoder keeps its ImageNet statistics; a random one normalises by batch
        self.encoder.train(not self.opt["pretrained"])
        if ctx.compile:
            compile_module(self.encoder)
        self.b = torch.ones(ctx.n_train, device=ctx.device, requires_grad=True)
        self.r = torch.ones(ctx.n_meta, device=ctx.device, requires_grad=True)
        upper = {"b": self.b, "r": self.r}
        upper.update({f"V.{k}": p for k, p in self.encoder.named_parameters()})
        groups = [
            {"params": [self.b], "lr": self.opt["lr_b"]},
            {"params": [self.r], "lr": self.opt["lr_r"]},
            {"params": list(self.encoder.parameters()), "lr": self.opt["lr_v"]},
        ]
        for name, (tensor, lr) in self.extra_upper().items():
            upper[name] = tensor
            groups.append({"params": [tensor], "lr": lr})
        self.weight_log = WeightLog(ctx.n_train)
        self.upper_opt = torch.optim.Adam([g for g in groups if g["params"]], weight_decay=0.0,
                                          fused=torch.device(ctx.device).type in ("cpu", "cuda"))
        # fused: one kernel for the encoder's 11 M parameters instead of a loop over 62 tensors
        # (45 ms -> 6 ms per step on one CPU thread)
        self.opt1 = make_sgd(self.w1.parameters(), ctx)
        self.opt2 = self.opt1 if self.w2 is self.w1 else make_sgd(self.w2.parameters(), ctx)
        # engine "auto": resolved on the first meta step (pick_engine) and kept in the checkpoint
        self.engine_used: str | None = None if self.opt["engine"] == AUTO else self.opt["engine"]
        self.engine_seconds: dict[str, float] = {}
        self.solver = TriLevelSolver(
            self.w1, self.w2, upper, self.opt1, self.opt2, self.upper_opt,
            engine=self.engine_used or "exact", modules=[self.encoder],
            # b, a (hence r and V) only weight per-example losses: no upper variable enters a
            # batch-norm input inside the forward-mode products, so the fused kernel is exact
            # (the single-network variant's Hessian term perturbs the weights themselves)
            upper_reaches_batch_norm=self.w2 is self.w1,
            grad_scaler=ctx.grad_scaler, reduce=ctx.reduce,
            hyper_params=classifier_params(self.w1) if self.head else None,
        )

    @classmethod
    def check_options(cls, options: dict) -> dict:
        """Every option with its default filled in; a bad value is one line, before anything runs."""
        opt = {**cls.DEFAULTS, **options}
        check_dr_engine(opt["engine"])
        check_choice("meta_layers", opt["meta_layers"], META_LAYERS)
        check_choice("variant", opt["variant"], ("two", "single"))
        every = opt["meta_every"]
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise UsageError(f"meta_every must be a whole number of steps >= 1, got {every!r}")
        return opt

    def extra_upper(self) -> dict[str, tuple[Tensor, float]]:
        """More upper variables (name -> (tensor, Adam lr)) for subclasses; none in the paper."""
        return {}

    def modules(self):
        mods = {"w1": self.w1, "encoder": self.encoder}
        if self.w2 is not self.w1:
            mods["w2"] = self.w2
        return mods

    def optimizers(self):
        opts = {"w1": self.opt1, "upper": self.upper_opt}
        if self.opt2 is not self.opt1:
            opts["w2"] = self.opt2
        return opts

    def extra_state(self):
        state = {"b": self.b.detach().clone(), "r": self.r.detach().clone(), "steps_done": self.steps_done}
        if self.opt["engine"] == AUTO:  # a resumed run goes on with the engine it picked
            state["engine_used"] = self.engine_used
        return state

    def load_extra_state(self, state):
        with torch.no_grad():
            self.b.copy_(state["b"])
            self.r.copy_(state["r"])
        self.steps_done = int(state.get("steps_done", 0))
        if self.opt["engine"] == AUTO and state.get("engine_used"):
            self.engine_used = self.solver.engine = check_dr_engine(state["engine_used"])

    def pick_engine(self, batch: tuple) -> str:
        """engine="auto": the faster exact engine for this problem and machine. Both are exact to
        rounding, so the choice is not part of the run's identity; it is logged, kept in the
        checkpoint and reported in the result (``engine_used``). Each engine takes two timed
        steps (interleaved, the faster of each counts) on throwaway copies of the networks, the
        encoder, the upper variables and the optimisers' state, so the run itself is untouched.
        Under autocast the JVP engine is kept: the graph-reuse products would run in the real
        steps' low precision, no longer equal to rounding."""
        device = torch.device(self.ctx.device)
        if torch.is_autocast_enabled(device.type):
            self.engine_used = "exact"
            self._log("engine auto: exact (autocast: its products stay float32)")
            return self.engine_used
        times: dict[str, float] = {e: float("inf") for e in EXACT_ENGINES}
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for _ in range(2):
                for engine in EXACT_ENGINES:
                    times[engine] = min(times[engine], self._trial_seconds(engine, batch))
        if self.ctx.reduce is not None:  # several processes decide together
            both = torch.tensor([times[e] for e in EXACT_ENGINES], device=device, dtype=torch.float64)
            self.ctx.reduce([both])
            times = dict(zip(EXACT_ENGINES, both.tolist()))
        self.engine_seconds = times
        self.engine_used = self.solver.engine = min(EXACT_ENGINES, key=times.get)
        self._log("engine auto: " + self.engine_used + " (" + ", ".join(
            f"{e} {t:.3g} s" for e, t in times.items()) + " per step, timed on the first meta step)")
        return self.engine_used

    def _trial_seconds(self, engine: str, batch: tuple) -> float:
        """Seconds of one LFM step with ``engine`` on copies of the current state."""
        memo: dict = {}
        w1, w2, enc, upper = copy.deepcopy((self.w1, self.w2, self.encoder, self.solver.upper), memo)

        def optimizer(opt):
            groups = [{**g, "params": [memo[id(p)] for p in g["params"]]} for g in opt.param_groups]
            clone = type(opt)(groups)
            clone.load_state_dict(opt.state_dict())
            return clone

        opt1 = optimizer(self.opt1)
        opt2 = opt1 if self.opt2 is self.opt1 else optimizer(self.opt2)
        solver = TriLevelSolver(w1, w2, upper, opt1, opt2, torch.optim.SGD(list(upper.values()), lr=0.0),
                                engine=engine, modules=[enc], upper_reaches_batch_norm=w2 is w1,
                                reduce=self.ctx.reduce, hyper_params=self.solver.hyper_params)
        problem = DRProblem(w1, w2, enc, *batch, self.opt["similarity"], self.opt["drop"],
                            bool(self.opt["normalize_a"]), head=self.head)
        device = torch.device(self.ctx.device)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        clock = time.perf_counter if device.type == "cuda" else time.process_time  # CPU: all threads' time
        sync()
        start = clock()
        solver.step(problem)
        sync()
        return clock() - start

    def _log(self, line: str) -> None:
        if self.ctx.log is not None:
            self.ctx.log(line)

    def train_step(self, x, y, idx, epoch):
        xm, ym, jm = self.ctx.next_meta()
        problem = DRProblem(self.w1, self.w2, self.encoder, x, y, idx, xm, ym, jm,
                            self.opt["similarity"], self.opt["drop"], bool(self.opt["normalize_a"]),
                            head=self.head)
        meta_step = self.steps_done % self.meta_every == 0
        self.steps_done += 1
        if meta_step and self.engine_used is None:
            self.pick_engine((x, y, idx, xm, ym, jm))
        if not meta_step:
            stats = self.solver.lower_step(problem)
        else:
            stats = self.solver.step(problem)
            if stats.finite:
                self.last_meta_loss = stats.loss3
                with torch.no_grad():
                    self.b.clamp_(min=self.opt["b_min"])
        if problem.last_a is not None:
            self.weight_log.record(idx, problem.last_a)
        # between meta-updates the meta loss reported is the last one computed
        return {"loss": stats.loss2, "loss_w1": stats.loss1, "meta_loss": self.last_meta_loss,
                "a_mean": stats.a_mean, "finite": float(stats.finite)}

    def eval_models(self):
        models = {"main": self.w2}
        if self.w2 is not self.w1:
            models["w1"] = self.w1
        return models

    def epoch_diagnostics(self, clean_mask: Tensor | None) -> dict[str, float]:
        """a (latest per example) and b on clean vs corrupted examples, as noise detectors, and r."""
        r = self.r.detach().float().cpu()
        out = {**self.weight_log.stats("a", clean_mask), **weight_stats("b", self.b, clean_mask),
               "r_mean": float(r.mean()), "r_std": float(r.std()), "r_min": float(r.min()), "r_max": float(r.max())}
        return out

    def summary(self, clean_mask: Tensor | None = None) -> dict[str, float]:
        """Mean b on clean and on corrupted training examples (what B learned)."""
        out = {"b_mean": float(self.b.detach().mean()), "r_mean": float(self.r.detach().mean())}
        if self.opt["engine"] == AUTO:
            out["engine_used"] = self.engine_used
        if clean_mask is not None and clean_mask.any() and (~clean_mask).any():
            b = self.b.detach().cpu()
            out["b_clean"] = float(b[clean_mask].mean())
            out["b_noisy"] = float(b[~clean_mask].mean())
        return out
