"""Search and evaluation loops: DARTS (1st/2nd order), P-DARTS, and their LFM versions.

:func:`search` runs one architecture search and returns the genotype; :func:`train_eval`
trains an evaluation network from a genotype and reports its test accuracy. A search can
be given a ``checkpoint`` (an object with ``load()`` and ``save(state)``): it then saves its
exact position after every epoch and on SIGTERM/SIGINT (a graceful stop after the step in
progress), and resumes from it to the result of an uninterrupted search. Each search stage and
each evaluation training is one :func:`lfm_core.loop.run_loop`.

Data: loaders yield ``(x, y)`` or ``(x, y, idx)``; LFM methods need the validation loader to
yield ``idx``, the example's index in the validation data set (it selects ``r_j``), e.g. by
wrapping the data set in :class:`lfm_core.data.WithIndices`.
"""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lfm_core.errors import CheckpointError, UsageError, check_choice
from lfm_core.hypergradient import default_fd_eps
from lfm_core.loop import Loop, NonFiniteGuard, Position, run_loop
from lfm_core.runtime import rng_state, set_rng_state
from lfm_core.stopping import stop_on_signals
from lfm_nas.darts import DartsArchitect
from lfm_nas.eval_net import NetworkCIFAR, cutout as apply_cutout, eval_loss
from lfm_nas.genotypes import Genotype
from lfm_nas.operations import PRIMITIVES
from lfm_nas.problem import ArchitectSettings, LFMArchitect
from lfm_nas.profiles import EvalSettings, SearchSettings
from lfm_nas.spaces import Network, PSNetwork, full_switches, limit_skips, pdarts_stages, prune_ops

SEARCH_METHODS = ("darts1", "darts2", "lfm-darts", "pdarts", "lfm-pdarts")

# the architect settings a search passes through to LFMArchitect, with their defaults
ARCHITECT_KEYS = ("variant", "engine", "similarity", "drop", "ps_features", "encoder_input", "w_lr", "w_momentum",
                  "w_weight_decay", "grad_clip", "arch_betas", "arch_weight_decay", "encoder_lr", "r_lr")
_ARCHITECT, _SEARCH, _EVAL = ArchitectSettings(), SearchSettings(), EvalSettings()
PDARTS_ARCH_LR = 6e-4  # P-DARTS' architecture learning rate (DARTS: ArchitectSettings.arch_lr)

DEFAULTS: dict[str, Any] = {
    "method": "darts2",
    # search space
    "C": _SEARCH.C, "layers": _SEARCH.layers, "steps": 4, "multiplier": 4, "primitives": PRIMITIVES,
    "num_classes": None,
    # LFM and the optimisers (the DARTS protocol): ArchitectSettings' defaults
    **{k: getattr(_ARCHITECT, k) for k in ARCHITECT_KEYS},
    "encoder": None, "encoder_kwargs": {}, "n_val": None,
    "lfm_start": None,  # None: SearchSettings.pdarts_lfm_start for P-DARTS, 0 for DARTS
    "w_lr_min": 0.001, "arch_lr": None,  # None: PDARTS_ARCH_LR for P-DARTS, ArchitectSettings.arch_lr for DARTS
    "arch_grad_clip": None,
    # DARTS's central-difference step (0.01) for both difference engines, not forward-difference's
    # own default (1e-3, what ArchitectSettings(fd_eps=None) takes)
    "fd_eps": default_fd_eps("finite-difference"),
    # P-DARTS
    "pdarts_layers": _SEARCH.pdarts_layers, "pdarts_ops": _SEARCH.pdarts_ops,
    "pdarts_skip_dropout": _SEARCH.pdarts_skip_dropout, "max_skips": 2,
    # misc
    "steps_per_epoch": None, "max_nonfinite": 10, "seed": None,
    "mixed_precision": "no",  # or "bf16": autocast of the search's forward passes
}
MIXED_PRECISION = ("no", "bf16")


# ------------------------------------------------------------------------------------
# data helpers
# ------------------------------------------------------------------------------------
class _Cycle(Iterator):
    """The batches of a loader, pass after pass, with a resumable position: the state of the
    loader's shuffling generator (the global torch RNG for a loader without one) when the current
    pass began, and the batches taken since."""

    def __init__(self, loader: Iterable):
        self.loader = loader
        self.generator = getattr(loader, "generator", None)
        self.it: Iterator | None = None
        self.pass_state: Tensor | None = None
        self.taken = 0

    def _new_pass(self) -> None:
        self.pass_state = (self.generator or torch.default_generator).get_state()
        self.it, self.taken = iter(self.loader), 0

    def __next__(self):
        if self.it is None:
            self._new_pass()
        try:
            batch = next(self.it)
        except StopIteration:
            self._new_pass()
            try:
                batch = next(self.it)
            except StopIteration:
                raise UsageError("a data loader is empty") from None
        self.taken += 1
        return batch

    def end_pass(self) -> None:
        """The caller took the whole pass (an epoch): the next batch starts a new one, and a
        position saved before it need not replay this one. The pass is run to its end as a
        ``for`` loop would (a shuffling sampler draws from its generator when it is exhausted)."""
        for _ in self.it or ():
            pass
        self.it, self.pass_state, self.taken = None, None, 0

    def state(self) -> dict[str, Any]:
        """Between passes ``pass_state`` is the state the next pass will start from."""
        started = self.it is not None
        pass_state = self.pass_state if started else (self.generator or torch.default_generator).get_state()
        return {"started": started, "pass_state": pass_state, "taken": self.taken}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Replay the current pass up to the saved batch (the caller restores the global RNG after)."""
        if not state["started"]:
            if state["pass_state"] is not None:
                (self.generator or torch.default_generator).set_state(state["pass_state"])
            self.it, self.pass_state, self.taken = None, None, 0
            return
        (self.generator or torch.default_generator).set_state(state["pass_state"])
        self.pass_state, self.it, self.taken = state["pass_state"], iter(self.loader), 0
        for _ in range(int(state["taken"])):
            next(self.it)
            self.taken += 1


def _to(batch: Sequence[Tensor], device) -> tuple[Tensor, ...]:
    return tuple(t.to(device, non_blocking=True) if torch.is_tensor(t) else torch.as_tensor(t, device=device)
                 for t in batch)


def _infer_num_classes(*loaders) -> int:
    for loader in loaders:
        ds = getattr(loader, "dataset", None)
        while ds is not None:
            for attr in ("num_classes",):
                if isinstance(getattr(ds, attr, None), int):
                    return getattr(ds, attr)
            if getattr(ds, "classes", None) is not None:
                return len(ds.classes)
            targets = getattr(ds, "targets", None)
            if targets is None and hasattr(ds, "tensors") and len(ds.tensors) > 1:
                targets = ds.tensors[1]
            if targets is not None:
                return int(torch.as_tensor(targets).max()) + 1
            ds = getattr(ds, "dataset", None)
    raise UsageError("cannot infer the number of classes from the loaders; pass num_classes")


def cosine_lr(epoch: int, epochs: int, lr_max: float, lr_min: float) -> float:
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * epoch / max(1, epochs)))


def _stopping(checkpoint: Any):
    """SIGTERM/SIGINT ask a loop with a checkpoint to stop gracefully; without one there is
    nothing to stop to, and signals keep their handlers."""
    return stop_on_signals() if checkpoint is not None else contextlib.nullcontext()


def _mismatch(what: str, exc: Exception) -> CheckpointError:
    """The one-line error for a checkpoint that does not fit the run loading it."""
    detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0][:120]
    return CheckpointError(f"{what} checkpoint does not match this {what} ({detail}); delete it or rerun with --force")


class _Memory:
    """Peak memory of a run: ``torch.cuda.max_memory_allocated`` on GPU, else the growth of the
    process's peak resident set (``ru_maxrss``; 0 when an earlier peak was higher)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
        self.device = device
        self.start = self._rss_mb()

    @staticmethod
    def _rss_mb() -> float:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux

    def peak_mb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return max(0.0, self._rss_mb() - self.start)


@torch.no_grad()
def evaluate_supernet(model: nn.Module, alphas: Mapping[str, Tensor], loader: Iterable, device,
                      head: int | None = None, max_batches: int | None = None) -> float:
    """Top-1 accuracy (%) of a supernet with fixed alphas (eval mode)."""
    was = model.training
    model.eval()
    correct = total = 0
    for b, batch in enumerate(loader):
        if max_batches is not None and b >= max_batches:
            break
        x, y = _to(batch[:2], device)
        logits = model(x, alphas, head=head) if head is not None else model(x, alphas)
        correct += int((logits.argmax(1) == y).sum())
        total += y.numel()
    model.train(was)
    return 100.0 * correct / max(1, total)


def _make_encoder(cfg: Mapping[str, Any], device) -> nn.Module:
    """The encoder V: a module, a factory, or a registered name (default ``smallcnn``) built by
    ``lfm_core.encoders.create_encoder(name, **encoder_kwargs)`` (``pretrained``, ``weights``)."""
    enc = cfg["encoder"] if cfg["encoder"] is not None else "smallcnn"
    if isinstance(enc, nn.Module):
        return enc.to(device)
    if isinstance(enc, str):
        from lfm_core.encoders import create_encoder

        return create_encoder(enc, **dict(cfg.get("encoder_kwargs") or {})).to(device)
    if callable(enc):
        return enc().to(device)
    raise UsageError(f"encoder must be a module, a registered name or a factory, got {type(enc).__name__}")


# ------------------------------------------------------------------------------------
# search
# ------------------------------------------------------------------------------------
def search(config: Mapping[str, Any], train_loader: Iterable, val_loader: Iterable, epochs: int,
           device: str | torch.device = "cpu", log: Callable[[dict], None] | None = None,
           progress: Callable[[int, int], None] | None = None, checkpoint: Any = None) -> dict:
    """One architecture search. ``config`` overrides :data:`DEFAULTS`; ``method`` is one of
    ``darts1``, ``darts2``, ``lfm-darts``, ``pdarts``, ``lfm-pdarts``. For P-DARTS methods
    ``epochs`` is per stage (the paper: 25) and ``lfm_start`` (default 10; 0 for DARTS) the first
    epoch of each stage with architecture / LFM updates; before it W (W1 and W2) train on the
    plain cross-entropy. Each P-DARTS stage builds new supernets, alphas and r (ones); the encoder
    V carries over. ``encoder`` is a module, a factory or a name for
    ``lfm_core.encoders.create_encoder`` (default ``smallcnn``, random init).

    Returns ``{"genotype", "alphas", "val_acc", "epoch_time_s", "peak_mem_mb", "history", ...}``;
    for LFM methods ``val_acc`` is W2's (the network trained for the validation loss), with
    ``val_acc_w1`` alongside.

    ``checkpoint``: an object with ``load() -> dict | None`` and ``save(state)``; the search saves
    its position after every epoch and, on SIGTERM/SIGINT, after the step in progress (then raises
    :class:`lfm_core.errors.GracefulStop`), and resumes from ``load()``'s state.
    """
    device = torch.device(device)
    cfg = _search_config(config, train_loader, val_loader)
    if cfg["seed"] is not None:
        torch.manual_seed(int(cfg["seed"]))
    run = _Search(cfg, train_loader, val_loader, epochs, device, log or (lambda record: None), progress, checkpoint)
    with _stopping(checkpoint):  # also between the stages, where no loop runs
        run.all_stages()
    return run.result()


def _search_config(config: Mapping[str, Any], train_loader: Iterable, val_loader: Iterable) -> dict[str, Any]:
    """:data:`DEFAULTS` updated by ``config``, checked, with the method-dependent defaults filled in."""
    cfg = {**DEFAULTS, **dict(config)}
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise UsageError(f"unknown search option(s): {', '.join(sorted(unknown))}")
    method = cfg["method"]
    check_choice("search method", method, SEARCH_METHODS)
    if cfg["mixed_precision"] not in MIXED_PRECISION:
        raise UsageError(f"mixed precision {cfg['mixed_precision']!r} is not supported by the architecture search "
                         f"(fp16 would need loss scaling in the DARTS steps). Valid choices: {', '.join(MIXED_PRECISION)}.")
    if cfg["num_classes"] is None:
        cfg["num_classes"] = _infer_num_classes(train_loader, val_loader)
    lfm, pdarts = method.startswith("lfm-"), method.endswith("pdarts")
    if cfg["arch_lr"] is None:
        cfg["arch_lr"] = PDARTS_ARCH_LR if pdarts else _ARCHITECT.arch_lr
    if cfg["lfm_start"] is None:
        cfg["lfm_start"] = _SEARCH.pdarts_lfm_start if pdarts else 0
    if pdarts and cfg["arch_grad_clip"] is None and not lfm:
        cfg["arch_grad_clip"] = 5.0  # P-DARTS clips the architecture gradient too
    if lfm and cfg["n_val"] is None:
        cfg["n_val"] = len(val_loader.dataset)  # type: ignore[attr-defined]
    if pdarts and int(cfg["pdarts_ops"][0]) != len(cfg["primitives"]):
        raise UsageError(f"pdarts_ops[0] ({cfg['pdarts_ops'][0]}) must equal the number of primitives "
                         f"({len(cfg['primitives'])})")
    return cfg


@dataclass
class _EpochTally:
    """The losses and seconds of the epoch in progress; a resumed epoch starts from its saved part."""

    losses: list[float] = field(default_factory=list)
    seconds_before: float = 0.0  # spent before the resume
    started: float | None = None

    def start(self) -> None:
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return self.seconds_before + (time.perf_counter() - self.started if self.started is not None else 0.0)

    def mean_loss(self) -> float:
        return sum(self.losses) / max(1, len(self.losses))

    def reset(self) -> None:
        self.losses, self.seconds_before, self.started = [], 0.0, None


class _Search:
    """One search between the loop's calls: the stages' supernets (``runner``), the data
    positions, the P-DARTS switches and what the checkpoint holds. Each stage is one
    :func:`~lfm_core.loop.run_loop` (test-stop labels ``nas:<stage>:<epoch>:<step>:mid``)."""

    def __init__(self, cfg: dict[str, Any], train_loader: Iterable, val_loader: Iterable, epochs: int,
                 device: torch.device, log: Callable[[dict], None], progress: Callable[[int, int], None] | None,
                 checkpoint: Any):
        self.cfg, self.val_loader, self.epochs, self.device = cfg, val_loader, epochs, device
        self.log, self.user_progress, self.checkpoint = log, progress, checkpoint
        method = cfg["method"]
        self.lfm, self.pdarts = method.startswith("lfm-"), method.endswith("pdarts")
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg["mixed_precision"] == "bf16")
        self.steps = int(cfg["steps_per_epoch"] or len(train_loader))  # type: ignore[arg-type]
        self.encoder = _make_encoder(cfg, device) if self.lfm and cfg["variant"] != "ps" else None
        self.stages = (pdarts_stages(cfg["pdarts_layers"], cfg["pdarts_ops"], cfg["pdarts_skip_dropout"], epochs,
                                     cfg["lfm_start"]) if self.pdarts else [None])
        self.total = self.steps * epochs * len(self.stages)
        self.done, self.epoch_times, self.history = 0, [], []
        self.guard = NonFiniteGuard(int(cfg["max_nonfinite"]) + 1)
        self.mem = _Memory(device)
        self.train_it, self.val_it = _Cycle(train_loader), _Cycle(val_loader)
        self.primitives = tuple(cfg["primitives"])
        self.switches = full_switches(len(self.primitives), cfg["steps"])
        self.tally = _EpochTally()
        self.stage_index, self.stage, self.runner = 0, None, None

    def all_stages(self) -> None:
        saved = self.checkpoint.load() if self.checkpoint is not None else None
        first = self._restore(saved) if saved is not None else 0
        for si, stage in enumerate(self.stages):
            if si < first:
                continue
            self.stage_index, self.stage, self.runner = si, stage, self._new_runner(stage)
            start = self._restore_stage(saved) if saved is not None and si == first else Position()
            run_loop(Loop(name=f"nas:{si}", epochs=self.epochs, steps=self.steps, step=self._step,
                          end_epoch=self._end_epoch, begin_epoch=self._begin_epoch,
                          save=self._save if self.checkpoint is not None else None, record=self.log,
                          progress=self._progress if self.user_progress else None, guard=self.guard,
                          title=f"search stage {si}"), start)
            if stage and stage.index < len(self.stages) - 1:
                self.switches = prune_ops(self.runner.alphas, self.switches, stage.keep, self.primitives)
                self.log({"stage": stage.index, "pruned_to": stage.keep})

    def _new_runner(self, stage) -> _DartsRunner | _LFMRunner:
        cfg = self.cfg
        space_kw = dict(C=cfg["C"], num_classes=cfg["num_classes"], layers=stage.layers if stage else cfg["layers"],
                        steps=cfg["steps"], multiplier=cfg["multiplier"], primitives=self.primitives)
        if stage:
            space_kw.update(switches=self.switches, skip_dropout=stage.skip_dropout)
        if self.lfm:
            return _LFMRunner(cfg, space_kw, self.encoder, self.device)
        return _DartsRunner(cfg, space_kw, cfg["method"], self.device)

    def _lr(self, epoch: int) -> float:
        return cosine_lr(epoch, self.epochs, self.cfg["w_lr"], self.cfg["w_lr_min"])

    def _begin_epoch(self, epoch: int) -> None:
        if self.stage:
            self.runner.set_skip_dropout(self.stage.skip_dropout_at(epoch))
        self.tally.start()

    def _step(self, epoch: int, step: int) -> bool:
        b_tr, b_val = _to(next(self.train_it), self.device), _to(next(self.val_it), self.device)
        with self.autocast:  # the solver's hypergradient products run in float32 regardless
            loss = self.runner.step(b_tr, b_val, self._lr(epoch), epoch >= self.cfg["lfm_start"])
        if loss is not None:
            self.tally.losses.append(loss)
        self.done += 1
        return loss is not None

    def _progress(self, _done: int, _total: int) -> None:
        self.user_progress(self.done, self.total)  # counted over all the stages

    def _end_epoch(self, epoch: int) -> dict[str, Any]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = self.tally.seconds()
        self.epoch_times.append(dt)
        record = {"stage": self.stage.index if self.stage else 0, "epoch": epoch, "lr": self._lr(epoch),
                  "arch": epoch >= self.cfg["lfm_start"], "train_loss": self.tally.mean_loss(), "time_s": dt,
                  "genotype": str(self.runner.genotype())}
        self.history.append(record)
        self.tally.reset()
        return record

    def _save(self, position: Position) -> None:
        state = {"done": self.done, "epoch_times": self.epoch_times, "history": self.history,
                 "nonfinite": self.guard.skipped}
        self.checkpoint.save({
            "stage": self.stage_index, "epoch": position.epoch, "step": position.step,
            "losses": list(self.tally.losses), "epoch_s": self.tally.seconds(), "state": state,
            "switches": self.switches, "runner": self.runner.state_dict(),
            "data": {"train": self.train_it.state(), "val": self.val_it.state()}, "rng": rng_state()})

    def _restore(self, saved: Mapping[str, Any]) -> int:
        """The search-wide part of a checkpoint of :meth:`_save`; returns the stage it resumes in."""
        try:
            state = saved["state"]
            self.done, self.guard.skipped = int(state["done"]), int(state["nonfinite"])
            self.epoch_times, self.history = list(state["epoch_times"]), list(state["history"])
            self.switches = {kind: [[bool(on) for on in edge] for edge in edges]
                             for kind, edges in saved["switches"].items()}
            return int(saved["stage"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"search checkpoint lacks or garbles {exc} (delete it or rerun with --force)") from None

    def _restore_stage(self, saved: Mapping[str, Any]) -> Position:
        """The stage's part (supernets, data positions, RNG, the epoch in progress)."""
        try:
            self.runner.load_state_dict(saved["runner"])
            self.train_it.load_state(saved["data"]["train"])
            self.val_it.load_state(saved["data"]["val"])
            set_rng_state(saved["rng"])  # last: a replayed pass may draw from the global RNG
            self.tally = _EpochTally([float(v) for v in saved["losses"]], float(saved["epoch_s"]))
            return Position(int(saved["epoch"]), int(saved["step"]))
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise _mismatch("search", exc) from None

    def result(self) -> dict[str, Any]:
        runner, cfg = self.runner, self.cfg
        result: dict[str, Any] = {}
        if self.pdarts:
            genotype = limit_skips(runner.alphas, runner.edge_ops, cfg["max_skips"], cfg["steps"], cfg["multiplier"])
            result["switches"] = self.switches
        else:
            genotype = runner.genotype()
        accs = runner.evaluate(self.val_loader)
        result.update({
            "genotype": genotype,
            "alphas": {k: v.detach().cpu() for k, v in runner.alphas.items()},
            "val_acc": accs["val_acc"],
            "epoch_time_s": sum(self.epoch_times) / max(1, len(self.epoch_times)),
            "peak_mem_mb": self.mem.peak_mb(),
            "history": self.history,
            "nonfinite_steps": self.guard.skipped,
            "method": cfg["method"],
        })
        result.update({k: v for k, v in accs.items() if k != "val_acc"})
        if self.lfm:
            result["r"] = runner.arch.r.cpu()
        return result


class _DartsRunner:
    def __init__(self, cfg, space_kw, method, device):
        self.model = Network(**space_kw).to(device)
        self.device = device
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg["w_lr"], momentum=cfg["w_momentum"],
                                   weight_decay=cfg["w_weight_decay"])
        order = "second" if method == "darts2" else "first"
        # DARTS has no one-sided variant: forward-difference LFM runs are compared with central differences
        engine = {"finite-difference": "finite-difference", "forward-difference": "finite-difference"}.get(
            cfg["engine"], "exact")
        if method == "darts2" and cfg["engine"] == "first-order":
            order = "first"
        self.arch = DartsArchitect(self.model, order=order, engine=engine, arch_lr=cfg["arch_lr"],
                                   arch_betas=cfg["arch_betas"], arch_weight_decay=cfg["arch_weight_decay"],
                                   fd_eps=cfg["fd_eps"], arch_grad_clip=cfg["arch_grad_clip"], w_optimizer=self.opt)
        self.grad_clip = cfg["grad_clip"]

    alphas = property(lambda self: self.arch.alphas)
    edge_ops = property(lambda self: self.model.edge_ops)

    def set_skip_dropout(self, p):
        self.model.set_skip_dropout(p)

    def genotype(self):
        return self.model.genotype(self.alphas)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                "alphas": {k: v.detach().clone() for k, v in self.arch.alphas.items()},
                "arch_opt": self.arch.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        with torch.no_grad():
            for k, v in self.arch.alphas.items():
                v.copy_(state["alphas"][k])
        self.arch.optimizer.load_state_dict(state["arch_opt"])

    def step(self, b_tr, b_val, lr, arch_on):
        for g in self.opt.param_groups:
            g["lr"] = lr
        x, y = b_tr[0], b_tr[1]
        if arch_on:
            self.arch.step(x, y, b_val[0], b_val[1], lr)
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(x, self.arch.alphas), y)
        loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        return float(loss.detach())

    def evaluate(self, loader):
        return {"val_acc": evaluate_supernet(self.model, self.alphas, loader, self.device)}


class _LFMRunner:
    def __init__(self, cfg, space_kw, encoder, device):
        variant = cfg["variant"]
        space = "pdarts" if "switches" in space_kw else "darts"
        from lfm_core.registries import SEARCH_SPACES

        factory = SEARCH_SPACES.get(space)
        if variant == "ps":
            kw = dict(space_kw)
            num_classes = kw.pop("num_classes")
            w1, w2 = PSNetwork(factory(**kw, num_classes=None), num_classes).to(device), None
        else:
            w1 = factory(**space_kw).to(device)
            w2 = factory(**space_kw).to(device) if variant == "two" else None
        self.device, self.variant = device, variant
        settings = ArchitectSettings(**{k: cfg[k] for k in ARCHITECT_KEYS}, arch_lr=cfg["arch_lr"],
                                     fd_eps=cfg["fd_eps"])
        self.arch = LFMArchitect(w1, w2, encoder, n_val=cfg["n_val"], settings=settings)

    alphas = property(lambda self: self.arch.alphas)
    edge_ops = property(lambda self: self.arch.w1.edge_ops)

    def set_skip_dropout(self, p):
        for m in {id(n): n for n in (self.arch.w1, self.arch.w2)}.values():
            m.set_skip_dropout(p)

    def genotype(self):
        return self.arch.genotype()

    def _modules(self) -> dict[str, nn.Module]:
        mods = {"w1": self.arch.w1, "w2": self.arch.w2, "encoder": self.arch.encoder}
        return {k: m for k, m in mods.items() if m is not None and (k != "w2" or m is not self.arch.w1)}

    def state_dict(self) -> dict[str, Any]:
        return {"modules": {k: m.state_dict() for k, m in self._modules().items()},
                "upper": {k: self.arch.upper[k].detach().clone() for k in ("alpha_normal", "alpha_reduce", "r")},
                "opt1": self.arch.opt1.state_dict(), "opt2": self.arch.opt2.state_dict(),
                "upper_opt": self.arch.upper_optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for k, m in self._modules().items():
            m.load_state_dict(state["modules"][k])
        with torch.no_grad():
            for k, v in state["upper"].items():
                self.arch.upper[k].copy_(v)
        self.arch.opt1.load_state_dict(state["opt1"])
        self.arch.opt2.load_state_dict(state["opt2"])
        self.arch.upper_optimizer.load_state_dict(state["upper_opt"])

    def step(self, b_tr, b_val, lr, arch_on):
        if len(b_val) < 3:
            raise UsageError("LFM needs the validation loader to yield (x, y, idx); wrap it in lfm_core.data.WithIndices")
        self.arch.set_w_lr(lr)
        for m in (self.arch.w1, self.arch.w2):
            m.train()
        if not arch_on:  # warm-up (P-DARTS: the first epochs of a stage): plain W1 and W2 steps
            return self.arch.warmup_step(b_tr)
        stats = self.arch.step(b_tr, b_val)
        if not stats.finite:
            return None
        return stats.loss2

    def evaluate(self, loader):
        a = self.alphas
        if self.variant == "ps":
            m = self.arch.w1
            return {"val_acc": evaluate_supernet(m, a, loader, self.device, head=2),
                    "val_acc_w1": evaluate_supernet(m, a, loader, self.device, head=1)}
        return {"val_acc": evaluate_supernet(self.arch.w2, a, loader, self.device),
                "val_acc_w1": evaluate_supernet(self.arch.w1, a, loader, self.device)}


# ------------------------------------------------------------------------------------
# evaluation training
# ------------------------------------------------------------------------------------
def train_epochs(model: nn.Module, opt: torch.optim.Optimizer, sched, train_loader: Iterable, epochs: int,
                 device: torch.device, *, drop_path: float, auxiliary_weight: float, label_smoothing: float = 0.0,
                 cutout: int = 0, grad_clip: float | None = 5.0, log: Callable[[dict], None] | None = None,
                 progress: Callable[[int, int], None] | None = None, checkpoint: Any = None) -> list[float]:
    """The evaluation networks' training loop (CIFAR and ImageNet): drop path rising linearly,
    auxiliary loss, optional cutout and clipping, one scheduler step per epoch. Returns epoch times.

    ``checkpoint`` (``load()`` / ``save(state)``, as for :func:`search`): the loop saves its
    position (model, optimiser, scheduler, global RNG, the loader's shuffling state) after every
    epoch and, on SIGTERM/SIGINT, after the step in progress (then raises
    :class:`lfm_core.errors.GracefulStop`), and resumes from ``load()``'s state to the result of an
    uninterrupted run; a kill loses the epoch in progress only."""
    run = _EvalTraining(model, opt, sched, _Cycle(train_loader), epochs, device, drop_path, auxiliary_weight,
                        label_smoothing, cutout, grad_clip, checkpoint)
    saved = checkpoint.load() if checkpoint is not None else None
    start = run.restore(saved) if saved is not None else Position()
    run_loop(Loop(name="eval", epochs=epochs, steps=len(train_loader), step=run.step,  # type: ignore[arg-type]
                  end_epoch=run.end_epoch, begin_epoch=run.begin_epoch,
                  save=run.save if checkpoint is not None else None, record=log, progress=progress,
                  title="evaluation"), start)
    return run.times


@dataclass
class _EvalTraining:
    """An evaluation network's training between the loop's calls (test-stop labels
    ``eval:<epoch>:<step>:mid``)."""

    model: nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    train_it: _Cycle
    epochs: int
    device: torch.device
    drop_path: float
    auxiliary_weight: float
    label_smoothing: float
    cutout: int
    grad_clip: float | None
    checkpoint: Any
    times: list[float] = field(default_factory=list)
    tally: _EpochTally = field(default_factory=_EpochTally)

    def begin_epoch(self, epoch: int) -> None:
        self.model.drop_path_prob = self.drop_path * epoch / max(1, self.epochs)
        self.model.train()
        self.tally.start()

    def step(self, epoch: int, step: int) -> bool:
        x, y = _to(next(self.train_it)[:2], self.device)
        if self.cutout:
            x = apply_cutout(x, self.cutout)
        self.opt.zero_grad(set_to_none=True)
        logits, logits_aux = self.model(x)
        loss = eval_loss(logits, logits_aux, y, self.auxiliary_weight, self.label_smoothing)
        loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        self.tally.losses.append(float(loss.detach()))
        return True

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        self.train_it.end_pass()
        self.sched.step()
        self.times.append(self.tally.seconds())
        record = {"epoch": epoch, "train_loss": self.tally.mean_loss(), "time_s": self.times[-1]}
        self.tally.reset()
        return record

    def save(self, position: Position) -> None:
        self.checkpoint.save({
            "epoch": position.epoch, "step": position.step, "losses": list(self.tally.losses),
            "epoch_s": self.tally.seconds(), "epoch_times": list(self.times), "model": self.model.state_dict(),
            "opt": self.opt.state_dict(), "sched": self.sched.state_dict(), "data": self.train_it.state(),
            "rng": rng_state()})

    def restore(self, saved: Mapping[str, Any]) -> Position:
        try:
            self.model.load_state_dict(saved["model"])
            self.opt.load_state_dict(saved["opt"])
            self.sched.load_state_dict(saved["sched"])
            self.train_it.load_state(saved["data"])
            set_rng_state(saved["rng"])  # last: a replayed pass may draw from the global RNG
            self.times = [float(t) for t in saved["epoch_times"]]
            self.tally = _EpochTally([float(v) for v in saved["losses"]], float(saved["epoch_s"]))
            return Position(int(saved["epoch"]), int(saved["step"]))
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise _mismatch("evaluation", exc) from None


def train_eval(genotype: Genotype, train_loader: Iterable, test_loader: Iterable, epochs: int,
               C: int = _EVAL.eval_C, layers: int = _EVAL.eval_layers, auxiliary_weight: float = _EVAL.auxiliary,
               drop_path: float = _EVAL.drop_path, cutout: int = _EVAL.cutout, lr: float = _EVAL.eval_lr,
               device: str | torch.device = "cpu", num_classes: int | None = None,
               momentum: float = 0.9, weight_decay: float = 3e-4, grad_clip: float | None = 5.0,
               seed: int | None = None, log: Callable[[dict], None] | None = None,
               progress: Callable[[int, int], None] | None = None, checkpoint: Any = None) -> dict:
    """Train ``NetworkCIFAR(C, layers, genotype)`` from scratch (DARTS protocol: SGD momentum 0.9,
    wd 3e-4, cosine lr to 0, drop path rising linearly to ``drop_path``, auxiliary head with
    weight ``auxiliary_weight``, cutout ``cutout`` applied to each training batch here: pass
    ``cutout=0`` if the loader already does it) and return its test accuracy and error (%).
    ``checkpoint``: see :func:`train_epochs` (the training resumes from its last saved position)."""
    device = torch.device(device)
    if seed is not None:
        torch.manual_seed(seed)
    num_classes = num_classes or _infer_num_classes(train_loader, test_loader)
    model = NetworkCIFAR(C, num_classes, layers, auxiliary_weight > 0, genotype, drop_path).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
    mem = _Memory(device)
    times = train_epochs(model, opt, sched, train_loader, epochs, device, drop_path=drop_path,
                         auxiliary_weight=auxiliary_weight, cutout=cutout, grad_clip=grad_clip,
                         log=log, progress=progress, checkpoint=checkpoint)
    model.eval()
    correct = n = 0
    with torch.no_grad():
        for batch in test_loader:
            x, y = _to(batch[:2], device)
            correct += int((model(x)[0].argmax(1) == y).sum())
            n += y.numel()
    acc = 100.0 * correct / max(1, n)
    return {"test_acc": acc, "test_err": 100.0 - acc, "epoch_time_s": sum(times) / max(1, len(times)),
            "peak_mem_mb": mem.peak_mb()}
