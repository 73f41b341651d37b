"""Find mislabelled training examples with one LFM training run.

    from lfm_dr import find_label_issues
    issues = find_label_issues(train, meta, num_classes=10, epochs=20)
    issues.ranked[:20]          # the 20 most suspicious training examples (indices into train)
    issues.scores               # suspicion per example, higher = more likely mislabelled
    issues.suggested_labels     # what the label probably should be

Every training example's W1 and W2 cross-entropy and LFM's a_i (paper eq. 9: does it look like
the clean meta examples of its own label?) are recorded *before* the step that trains on it, so
each record is out of sample. Each becomes a candidate suspicion score (``CANDIDATES``); by
default probes (meta examples moved into the training set, half with a wrong label) choose the
one that ranks, reading the training and meta sets only. How well each ranks, against cleanlab:
benchmarks/README.md, "Finding label errors".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.data import Dataset

from lfm_core.encoders import PixelEncoder
from lfm_core.errors import check_choice
from lfm_core.loop import Loop, NonFiniteGuard, run_loop
from lfm_core.runtime import seed_everything
from lfm_core.weighting import SIMILARITIES
from lfm_dr.user_data import UserData
from lfm_dr.methods.lfm import DRProblem
from lfm_dr.train import MAX_BAD_STEPS, TrainConfig, DRRun, build_method, device_of, gather, lr_factor

# V is fixed and label-free (flattened pixels minus their mean, L2-normalised, scaled to a softmax
# temperature): attention through a randomly initialised CNN is close to uniform, and a_i then says
# little about the example
PIXEL_ENCODER = "pixels"  # lfm_core.encoders.PixelEncoder; its scale is set from the temperature
AUTO = "auto"
DEFAULT_SCORE = AUTO
# The candidates, in the automatic choice's order of preference (see ``choose_score``; the order
# of the first two was chosen on development data, seed 0 of both stand-ins):
# * w2_margin_avg: minus W2's margin on the example (the logit of its label minus the largest
#   other logit), averaged over the epochs: the area under the margin (Pleiss et al., NeurIPS 2020);
# * combined: the mean rank of disagreement, w2_loss_avg and one_minus_a_avg;
# * disagreement: 1 - sum_j x_ij z_ij with the final encoder over the whole meta set, i.e. eq. 2's
#   attention mass on meta examples of *other* labels;
# * one_minus_a_avg: 1 - a_i averaged over the epochs (a_i uses W1's meta losses u and r);
# * one_minus_a_final: 1 - a_i of eq. 5 with the final encoder, r and W1 over the whole meta set;
# * w2_loss_avg / w1_loss_avg: W2's / W1's loss on the example averaged over the epochs;
# * w2_loss_final: the final W2's loss (in-sample: it has memorised part of the noise);
# * b: B's weight (it *rises* on noisy examples, so it is a suspicion score as it is);
# * networks: the mean rank of w1_loss_avg and w2_loss_avg (W1 and W2 as an ensemble);
# * networks_early: W1's plus W2's loss averaged over the first half of the epochs only, before the
#   networks start to memorise the wrong labels.
CANDIDATES = ("w2_margin_avg", "combined", "disagreement", "one_minus_a_avg", "one_minus_a_final", "w2_loss_avg",
              "w1_loss_avg", "w2_loss_final", "b", "networks", "networks_early")
SCORES = (AUTO, *CANDIDATES)
# the automatic choice's probes: this share of each class's meta examples joins the training set,
# this share of those with a wrong label (both fixed before any measurement, never tuned)
PROBE_SHARE, PROBE_CORRUPTED = 0.5, 0.5
COMBINED = ("disagreement", "w2_loss_avg", "one_minus_a_avg")
Progress = Callable[[int, int], None]


@dataclass
class LabelIssues:
    """What ``find_label_issues`` found; every tensor is indexed like the training set."""

    scores: Tensor  # suspicion, higher = more likely mislabelled
    ranked: Tensor  # indices of the training set by decreasing suspicion
    given_labels: Tensor
    # argmax of predicted_probs + attention_votes (W2 alone learns pair noise, the vote alone
    # misreads atypical handwriting)
    suggested_labels: Tensor
    flagged: Tensor  # bool: the top-m suspects, m = number of examples whose suggestion differs
    score_name: str  # the candidate that ranks (with score="auto": the one the probes chose)
    candidates: dict[str, Tensor] = field(default_factory=dict)  # every candidate score
    probe_auroc: dict[str, float] = field(default_factory=dict)  # score="auto": each candidate on the probes
    encoder: nn.Module | None = None
    r: Tensor | None = None
    b: Tensor | None = None
    model: nn.Module | None = None  # W2
    predicted_probs: Tensor | None = None  # W2's softmax averaged over the epochs, [n, K]
    attention_votes: Tensor | None = None  # attention mass on the meta examples of each class, [n, K]


class _RecordingProblem(DRProblem):
    """The LFM-DR step's problem (same losses as ``DRProblem``), noting at their first
    evaluation in the step W1's per-example losses and W2's logits (before either network's
    update on this batch) and a_i (as the step computes it, from W1'), so no extra forward
    pass is needed."""

    def __init__(self, *args, record: dict[str, Tensor]):
        super().__init__(*args)
        self.record = record

    def loss1(self, w1, upper):
        losses = F.cross_entropy(functional_call(self.w1, w1, (self.x,)), self.y, reduction="none")
        self.record.setdefault("w1_loss", losses.detach())
        return (upper["b"][self.idx] * losses).mean()

    def weights(self, w1, upper):
        a = super().weights(w1, upper)
        self.record.setdefault("a", a.detach())
        return a

    def loss2(self, w2, a, upper):
        logits = functional_call(self.w2, w2, (self.x,))
        self.record.setdefault("w2_logits", logits.detach())
        return (a * F.cross_entropy(logits, self.y, reduction="none")).mean()


class _Tracker:
    """Running per-example sums over the epochs."""

    def __init__(self, n: int, k: int):
        self.n_seen = torch.zeros(n)
        self.w1_loss = torch.zeros(n)
        self.w2_loss = torch.zeros(n)
        self.a = torch.zeros(n)
        self.w2_probs = torch.zeros(n, k)
        self.w2_margin = torch.zeros(n)
        self.early_seen = torch.zeros(n)  # the first half of the epochs, before the networks memorise
        self.early_loss = torch.zeros(n)  # W1's plus W2's loss there

    def add(self, idx: Tensor, y: Tensor, rec: dict[str, Tensor], early: bool = False) -> None:
        idx, y = idx.cpu(), y.cpu()
        logits = rec["w2_logits"].float().cpu()
        w1 = rec["w1_loss"].float().cpu()
        w2 = F.cross_entropy(logits, y, reduction="none")
        self.n_seen[idx] += 1
        self.w1_loss[idx] += w1
        self.w2_loss[idx] += w2
        self.a[idx] += rec["a"].float().cpu()
        self.w2_probs[idx] += logits.softmax(1)
        own = logits.gather(1, y[:, None]).squeeze(1)
        self.w2_margin[idx] += own - logits.scatter(1, y[:, None], float("-inf")).amax(1)
        if early:
            self.early_seen[idx] += 1
            self.early_loss[idx] += w1 + w2

    def mean(self, t: Tensor) -> Tensor:
        seen = self.n_seen.clamp_min(1)
        return t / (seen if t.dim() == 1 else seen[:, None])


def _ranks01(s: Tensor) -> Tensor:
    """Ranks scaled to [0, 1] (ties broken by position): a scale-free score to average."""
    r = torch.empty(len(s))
    r[torch.argsort(s, stable=True)] = torch.arange(len(s), dtype=torch.float32)
    return r / max(len(s) - 1, 1)


class _WithProbes(Dataset):
    """The training set followed by the probes (meta examples at ``probe_idx`` with ``probe_labels``)."""

    def __init__(self, train: Dataset, meta: Dataset, probe_idx: Tensor, labels: Tensor):
        self.train, self.meta, self.probe_idx, self.labels = train, meta, probe_idx, labels
        self.n_train = len(train)

    def __len__(self) -> int:
        return self.n_train + len(self.probe_idx)

    def __getitem__(self, i):
        i = int(i)
        item = self.train[i] if i < self.n_train else self.meta[int(self.probe_idx[i - self.n_train])]
        return item[0], int(self.labels[i])


def make_probes(meta_labels: Tensor, num_classes: int, seed: int) -> tuple[Tensor, Tensor, Tensor] | None:
    """Which meta examples become probes for the automatic score: ``PROBE_SHARE`` of each class
    (seeded), ``PROBE_CORRUPTED`` of those given a uniformly drawn wrong label. Returns (probe
    indices into meta, their labels, which are corrupted), or None when a class has fewer than 4
    meta examples (too few to keep a meta set and probe it)."""
    counts = torch.bincount(meta_labels, minlength=num_classes)
    if int(counts.min()) < 4:
        return None
    rng = np.random.default_rng([int(seed), 2026])
    y = meta_labels.numpy()
    idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), int(counts[c] * PROBE_SHARE), replace=False)
                                  for c in range(num_classes)]))
    bad = np.zeros(len(idx), dtype=bool)
    bad[rng.choice(len(idx), int(round(len(idx) * PROBE_CORRUPTED)), replace=False)] = True
    labels = y[idx].copy()
    labels[bad] = (labels[bad] + rng.integers(1, num_classes, int(bad.sum()))) % num_classes
    return torch.from_numpy(idx), torch.from_numpy(labels), torch.from_numpy(bad)


def auroc_standard_error(area: float, n_pos: int, n_neg: int) -> float:
    """The standard error of an AUROC ``area`` from ``n_pos`` positives and ``n_neg`` negatives
    (Hanley and McNeil, Radiology 1982)."""
    q1, q2 = area / (2 - area), 2 * area ** 2 / (1 + area)
    var = (area * (1 - area) + (n_pos - 1) * (q1 - area ** 2) + (n_neg - 1) * (q2 - area ** 2)) / (n_pos * n_neg)
    return float(np.sqrt(max(var, 0.0)))


def choose_score(candidates: dict[str, Tensor], corrupted: Tensor) -> tuple[str, dict[str, float]]:
    """The first candidate, in ``CANDIDATES``' order, whose AUROC for ``corrupted`` is within one
    standard error of the best (the one-standard-error rule: 25 + 25 probes cannot tell apart
    candidates closer than that, so a fixed preference decides between them)."""
    aurocs = {k: auroc(candidates[k], corrupted) for k in CANDIDATES}
    top = max(v for v in aurocs.values() if not np.isnan(v))
    n_pos = int(torch.as_tensor(corrupted).sum())
    floor = top - auroc_standard_error(top, n_pos, len(corrupted) - n_pos)
    return next(k for k in CANDIDATES if aurocs[k] >= floor), aurocs


def _all(data: Dataset, device) -> tuple[Tensor, Tensor]:
    x, y, _ = gather(data, torch.arange(len(data)), device)
    return x, y


@torch.no_grad()
def _final_attention(method, train: Dataset, meta: Dataset, num_classes: int, device, batch: int = 500):
    """With the final encoder, r and W1, over the whole meta set: a_i of eq. 5, and the
    attention mass on meta examples of each class (``[n, K]``; its entry at the example's own
    label is sum_j x_ij z_ij)."""
    enc, w1 = method.encoder, method.w1
    was = w1.training
    w1.eval()
    xm, ym = _all(meta, device)
    u = F.cross_entropy(w1(xm), ym, reduction="none")
    f_val = enc(xm)
    onehot = F.one_hot(ym, num_classes).float()
    sim = SIMILARITIES.get(method.opt["similarity"])
    r = method.r.detach()
    a_out, votes = [], []
    for start in range(0, len(train), batch):
        x, y, _ = gather(train, torch.arange(start, min(start + batch, len(train))), device)
        att = torch.softmax(sim(enc(x), f_val), dim=1)
        z = (y[:, None] == ym[None, :]).to(att.dtype)
        votes.append((att @ onehot).cpu())
        a_out.append(torch.sigmoid((att * z * u[None, :]) @ r).cpu())
    w1.train(was)
    return torch.cat(a_out), torch.cat(votes)


@torch.no_grad()
def _final_losses(model: nn.Module, data: Dataset, device, batch: int = 500) -> Tensor:
    was = model.training
    model.eval()
    out = []
    for start in range(0, len(data), batch):
        x, y, _ = gather(data, torch.arange(start, min(start + batch, len(data))), device)
        out.append(F.cross_entropy(model(x), y, reduction="none").cpu())
    model.train(was)
    return torch.cat(out)


def train_loop(cfg: TrainConfig, splits, seed: int, step=None, progress: Progress | None = None, setup=None):
    """Train ``cfg.method`` for ``cfg.epochs`` on :func:`lfm_core.loop.run_loop` with the DR
    trainer's data order, lr schedule and non-finite guard (a run that diverges raises
    :class:`~lfm_core.errors.NonFiniteError`), without its evaluation and checkpoints.
    ``setup(method)`` runs once after it is built; ``step(method, x, y, idx, epoch)`` replaces its
    own ``train_step`` and returns whether the step was finite. Returns the method."""
    device = device_of(cfg)
    seed_everything(seed)
    method, stream, meta_stream = build_method(cfg, splits, seed, device)
    if setup is not None:
        setup(method)
    guard = NonFiniteGuard(MAX_BAD_STEPS, in_a_row=True, advice=lambda epoch: (
        f" (method {cfg.method}, lr {cfg.lr * lr_factor(cfg, epoch):g}); the same settings diverge again: "
        "lower the learning rate or change the seed"))
    # the DR run without a run context: its lr schedule and own step only (no evaluation, no checkpoint)
    run = DRRun(cfg, splits, None, method, stream, meta_stream, device, None, guard, shard=slice(None))

    def own_step(epoch: int, i: int) -> bool:
        x, y, idx = gather(splits.train, stream.batch_indices(epoch, i), device, cfg.augment)
        return bool(step(method, x, y, idx, epoch))

    def end_epoch(epoch: int) -> dict[str, Any]:
        method.end_epoch(epoch)
        return {}

    run_loop(Loop(name="label_issues", epochs=cfg.epochs, steps=stream.per_epoch,
                  step=run.step if step is None else own_step, end_epoch=end_epoch, begin_epoch=run.begin_epoch,
                  progress=progress, guard=guard, title="label-issue training"))
    return method


def find_label_issues(
    train: Dataset,
    meta: Dataset,
    num_classes: int,
    *,
    epochs: int = 20,
    model: str = "resnet32",
    model_kwargs: dict[str, Any] | None = None,
    batch_size: int = 100,
    meta_batch_size: int = 50,
    lr: float = 0.1,
    seed: int = 0,
    device: str | None = None,
    score: str = DEFAULT_SCORE,
    temperature: float = 0.1,
    progress: Progress | None = None,
    **options: Any,
) -> LabelIssues:
    """Rank the examples of ``train`` (items start with ``(image, label)``) by how likely their
    label is wrong, from one LFM run with the clean ``meta`` set (10-100 per class).

    ``score`` picks the candidate that ranks (see the module docstring); the default ``auto``
    chooses it from the data: half of each class's meta examples join the training set as
    probes, half of those with a wrong label, and the candidate that best ranks the corrupted
    probes first ranks the training set (``LabelIssues.probe_auroc``); only the training and meta
    sets are read. The probes are left out of every returned tensor;
    ``temperature`` is the pixel encoder's softmax temperature; ``options`` go to LFM (e.g.
    ``engine``, ``lr_b``, or ``encoder="resnet18"`` to use a learned encoder instead).
    ``progress(done, total)`` is called after every training step.
    """
    check_choice("label-issue score", score, SCORES)
    options = {"encoder": PIXEL_ENCODER, "pretrained": False, "engine": "forward-difference", **options}
    tr, me = UserData(train), UserData(meta)
    n = len(tr)
    probes = make_probes(me.labels, num_classes, seed) if score == AUTO else None
    if probes is not None:  # the probes join the training set; the rest of the meta set stays meta
        probe_idx, probe_labels, corrupted = probes
        rest = torch.from_numpy(np.setdiff1d(np.arange(len(me)), probe_idx.numpy()))
        joined = _WithProbes(train, meta, probe_idx, torch.cat([tr.labels, probe_labels]))
        tr, me = UserData(joined, labels=joined.labels), UserData(torch.utils.data.Subset(meta, rest.tolist()))
    splits = SimpleNamespace(train=tr, meta=me, test=me, num_classes=num_classes, info={})
    cfg = TrainConfig(method="lfm", model=model, model_kwargs=model_kwargs or {}, epochs=epochs,
                      batch_size=batch_size, meta_batch_size=meta_batch_size, lr=lr, device=device, options=options)
    tracker = _Tracker(len(tr), num_classes)

    def setup(method):
        if isinstance(method.encoder, PixelEncoder):  # dot products / scale**2 = cosine / temperature
            method.encoder.scale = float(temperature) ** -0.5

    def step(method, x, y, idx, epoch):
        xm, ym, jm = method.ctx.next_meta()
        record: dict[str, Tensor] = {}
        problem = _RecordingProblem(method.w1, method.w2, method.encoder, x, y, idx, xm, ym, jm,
                                    method.opt["similarity"], method.opt["drop"], record=record)
        stats = method.solver.step(problem)
        if stats.finite:
            with torch.no_grad():
                method.b.clamp_(min=method.opt["b_min"])
        if len(record) == 3:  # a step that stopped early (non-finite loss) records less
            tracker.add(idx, y, record, early=epoch < max(epochs // 2, 1))
        return stats.finite

    method = train_loop(cfg, splits, seed, step, progress, setup)
    dev = device_of(cfg)
    a_final, votes = _final_attention(method, tr, me, num_classes, dev)
    agreement = votes.gather(1, tr.labels[:, None]).squeeze(1)
    w2_avg = tracker.mean(tracker.w2_loss)
    candidates = {
        "w2_loss_avg": w2_avg,
        "w1_loss_avg": tracker.mean(tracker.w1_loss),
        "w2_margin_avg": -tracker.mean(tracker.w2_margin),
        "w2_loss_final": _final_losses(method.w2, tr, dev),
        "one_minus_a_avg": 1 - tracker.mean(tracker.a),
        "one_minus_a_final": 1 - a_final,
        "disagreement": 1 - agreement,
        "b": method.b.detach().cpu().clone(),
        "networks_early": tracker.early_loss / tracker.early_seen.clamp_min(1),
    }
    # the two networks as a two-member ensemble: the mean rank of their epoch-averaged losses
    candidates["networks"] = (_ranks01(candidates["w1_loss_avg"]) + _ranks01(w2_avg)) / 2
    # the mean rank of three signals that fail differently (see the module docstring)
    candidates["combined"] = sum(_ranks01(candidates[k]) for k in COMBINED) / len(COMBINED)
    probe_auroc: dict[str, float] = {}
    if probes is not None:
        score, probe_auroc = choose_score({k: v[n:] for k, v in candidates.items()}, probes[2])
        candidates = {k: v[:n] for k, v in candidates.items()}
        votes = votes[:n]
    elif score == AUTO:  # too few meta examples to probe: the fixed combination
        score = "combined"
    scores = candidates[score]
    ranked = torch.argsort(scores, descending=True, stable=True)
    w2_probs = tracker.mean(tracker.w2_probs)[:n]
    given = tr.labels[:n]
    # W2 alone learns systematic (pair) noise, the meta vote alone misreads atypical
    # handwriting; their sum was the most accurate suggestion on the digits benchmark
    suggested = (w2_probs + votes).argmax(1)
    m = int((suggested != given).sum())
    flagged = torch.zeros(n, dtype=torch.bool)
    flagged[ranked[:m]] = True
    return LabelIssues(
        scores=scores, ranked=ranked, given_labels=given.clone(), suggested_labels=suggested,
        flagged=flagged, score_name=score, candidates=candidates, encoder=method.encoder,
        r=method.r.detach().cpu().clone(), b=candidates["b"], model=method.w2,
        predicted_probs=w2_probs, attention_votes=votes, probe_auroc=probe_auroc,
    )


def auroc(scores: Any, positives: Any) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positives`` (ties count half)."""
    from sklearn.metrics import roc_auc_score

    p = np.asarray(positives, dtype=bool)
    if p.all() or not p.any():
        return float("nan")
    return float(roc_auc_score(p, np.asarray(scores, dtype=np.float64)))
