"""Train a model with LFM reweighting (or any registered method) on your own data.

    from lfm_dr import fit
    result = fit(train_set, meta_set, num_classes=10, test=test_set, epochs=30)
    model = result.model            # W2, the network trained on the LFM-weighted loss
    result.weights                  # b_i per training example (what B learned)

``train_set``, ``meta_set`` and ``test_set`` are any map-style datasets whose items start with
``(image_tensor, label)``; the meta set is a small clean subset (e.g. 10-100 per class).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.data import Dataset

from lfm_core.errors import UsageError
from lfm_core.registries import ENCODERS, METHODS, MODELS
from lfm_core.runner import RunContext
from lfm_dr.train import TrainConfig, build_method, device_of, train_dr, training_order
from lfm_dr.user_data import (
    UserData,
    built_on_meta,
    check_channels,
    check_labels,
    check_options,
    check_same_classes,
    image_shape,
    input_channels,
    labels_of,
)

# timm's import makes torch warn that torch.jit.script is deprecated: not the user's concern
_TORCH_WARNINGS = r".*torch\.jit\.script.*"


@dataclass
class FitResult:
    model: nn.Module
    models: dict[str, nn.Module]
    metrics: dict[str, Any]
    weights: torch.Tensor | None
    run_dir: Path | None  # None: no run_dir was given, and the temporary one is gone
    encoder: nn.Module | None = None  # LFM's trained V (None for other methods)
    r: torch.Tensor | None = None  # LFM's r_j per meta example


@dataclass
class _FitContext(RunContext):
    """RunContext that renames the evaluated set's keys (meta_acc without a test set) and
    reports each epoch's record to the progress bar."""

    on_epoch: Callable[[dict[str, Any]], None] = lambda record: None
    evaluated: str = "test"

    def log_metrics(self, record: dict[str, Any]) -> None:
        record = _named_for(record, self.evaluated)
        super().log_metrics(record)
        self.on_epoch(record)


def _named_for(metrics: dict[str, Any], evaluated: str) -> dict[str, Any]:
    """``test_acc*`` -> ``meta_acc*`` and ``confusion`` -> ``meta_confusion`` when the meta set was evaluated."""
    if evaluated == "test":
        return metrics
    out = {}
    for key, value in metrics.items():
        if key.startswith("test_acc"):
            key = evaluated + key[len("test"):]
        elif key == "confusion":
            key = f"{evaluated}_confusion"
        out[key] = value
    return out


@contextlib.contextmanager
def _progress_bar(enabled: bool, evaluated: str) -> Iterator[tuple[Callable, Callable]]:
    """(step callback, epoch callback) of a rich progress bar on stderr, or two no-ops."""
    if not enabled:
        yield (lambda done, total, text="": None), (lambda record: None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[last]}")]
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("fit", total=None, last="")

        def step(done: int, total: int, text: str = "") -> None:
            bar.update(task, completed=done, total=total, description=text)

        def epoch(record: dict[str, Any]) -> None:
            parts = [f"epoch {record['epoch']}"]
            if "train_loss" in record:
                parts.append(f"loss {record['train_loss']:.3f}")
            if f"{evaluated}_acc" in record:
                parts.append(f"{evaluated}_acc {record[f'{evaluated}_acc']:.2f}")
            bar.update(task, last=", ".join(parts))

        yield step, epoch


def fit(
    train: Dataset,
    meta: Dataset,
    *,
    num_classes: int,
    test: Dataset | None = None,
    model: str = "resnet32",
    model_kwargs: dict[str, Any] | None = None,
    method: str = "lfm",
    epochs: int = 30,
    batch_size: int = 100,
    lr: float = 0.1,
    seed: int = 0,
    run_dir: str | Path | None = None,
    device: str | None = None,
    progress: bool = True,
    num_workers: int = 0,
    compile: bool = False,
    **options: Any,
) -> FitResult:
    """Train ``model`` (a registered name, see ``lfm-bench list -r models``) with ``method``.

    ``options`` go to the method and are checked against the ones it reads, e.g.
    ``encoder="resnet18", pretrained=True, encoder_weights="resnet18.pth", engine="finite-difference"``
    for LFM. Labels, image channels and ImageFolder classes are checked before training; a bad
    value raises ``lfm_core.errors.UsageError`` with a one-line message.

    ``compile=True`` runs the networks through ``torch.compile`` (the first steps pay the
    compilation; results equal the eager ones to rounding). ``progress`` shows a progress bar
    on stderr; ``num_workers`` processes read the batches of
    datasets that are not in-memory tensors. A ``run_dir`` makes the run resumable (checkpoint
    every epoch); without one a temporary folder is used and removed. Without ``test`` the model
    is evaluated on the meta set and the metrics say ``meta_acc``, not ``test_acc``: the meta
    set trained the upper level, so this is no held-out estimate.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TORCH_WARNINGS, category=FutureWarning)
        splits, options = _checked_inputs(train, meta, test, num_classes, model, model_kwargs or {}, method,
                                          epochs, batch_size, lr, num_workers, options)
        cfg = TrainConfig(method=method, model=model, model_kwargs=model_kwargs or {}, epochs=epochs,
                          batch_size=batch_size, meta_batch_size=batch_size, lr=lr, device=device, options=options,
                          compile=compile)
        evaluated = "test" if test is not None else "meta"
        order = training_order(cfg, splits.train, seed)  # the workers load the training batches ahead
        splits.train.plan = lambda idx: order.batches_from(idx, epochs)
        folder = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="lfm-fit-"))
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with _progress_bar(progress, evaluated) as (on_step, on_epoch), _FitContext(
                    run_dir=folder, config={"method": method, "model": model, "seed": seed}, progress=on_step,
                    on_epoch=on_epoch, evaluated=evaluated) as ctx:
                metrics = train_dr(cfg, splits, seed, ctx)
                state = ctx.load_checkpoint()
            # rebuild the method from the final checkpoint to hand its trained modules back
            built, _, _ = build_method(cfg, splits, seed, device_of(cfg))
        finally:
            for reader in {id(r): r for r in (splits.train, splits.meta, splits.test)}.values():
                reader.close()
            if not run_dir:  # nothing to resume without a run_dir: the trained modules are in memory
                shutil.rmtree(folder, ignore_errors=True)
    for name, module in built.modules().items():
        module.load_state_dict(state["modules"][name])
    built.load_extra_state(state["extra"])
    models = built.eval_models()
    weights = getattr(built, "b", None)
    metrics = {k: v for k, v in _named_for(metrics, evaluated).items() if not k.startswith("_")}
    r = getattr(built, "r", None)
    return FitResult(models["main"], models, metrics, None if weights is None else weights.detach().cpu(),
                     folder if run_dir else None, encoder=getattr(built, "encoder", None),
                     r=None if r is None else r.detach().cpu())


def _checked_inputs(train, meta, test, num_classes, model, model_kwargs, method, epochs, batch_size, lr,
                    num_workers, options) -> tuple[SimpleNamespace, dict[str, Any]]:
    """The trainer's splits, after every check that can fail before training starts."""
    for name, value, ok in (("num_classes", num_classes, isinstance(num_classes, int) and num_classes >= 1),
                            ("epochs", epochs, isinstance(epochs, int) and epochs >= 1),
                            ("batch_size", batch_size, isinstance(batch_size, int) and batch_size >= 1),
                            ("num_workers", num_workers, isinstance(num_workers, int) and num_workers >= 0),
                            ("lr", lr, isinstance(lr, (int, float)) and lr > 0)):
        if not ok:
            kind = "a positive number" if name == "lr" else "an integer >= 0" if name == "num_workers" else \
                "a positive integer"
            raise UsageError(f"{name}={value!r}: expected {kind}")
    method_cls = METHODS.get(method)  # unknown names: one line with did-you-mean
    MODELS.get(model)
    known = getattr(method_cls, "known_options", None)
    check_options(method, known, options)
    options = dict(options)
    if known is not None and "encoder" in known:  # the library's default: a small random encoder
        options.setdefault("pretrained", False)
        options.setdefault("encoder", "pixels" if method == "lfm_plus" else "smallcnn")

    sets = {"train": train, "meta": meta} | ({"test": test} if test is not None else {})
    wrapped = {}
    for name, data in sets.items():
        labels = labels_of(data)
        check_labels(labels, num_classes, name)
        wrapped[name] = UserData(data, num_workers, labels)
        if name != "train":
            check_same_classes(train, data, name)
    shapes = {name: image_shape(data, name) for name, data in sets.items()}
    channels = shapes["train"][0]
    for name, shape in shapes.items():
        if shape[0] != channels:
            raise UsageError(f"the {name} images have {shape[0]} channel{'s' * (shape[0] != 1)} but the train "
                             f"images have {channels}; give every set the same number of channels")
    try:
        net = built_on_meta(lambda: MODELS.create(model, num_classes=num_classes, **model_kwargs))
    except TypeError as exc:
        raise UsageError(f"model_kwargs {model_kwargs} do not fit model {model!r}: {exc}") from None
    check_channels(channels, input_channels(net), f"model {model!r}")
    if known is not None and "encoder" in known:
        encoder = ENCODERS.get(options["encoder"])
        check_channels(channels, input_channels(built_on_meta(lambda: encoder(pretrained=False))),
                       f"encoder {options['encoder']!r}")

    # without a test set, evaluation reads the meta set through its own reader
    evaluated = wrapped["test"] if "test" in wrapped else UserData(meta, num_workers, wrapped["meta"].labels)
    splits = SimpleNamespace(train=wrapped["train"], meta=wrapped["meta"], test=evaluated,
                             num_classes=num_classes, info={})
    return splits, options
