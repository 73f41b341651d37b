"""A user's datasets as the DR trainer reads them, and the checks ``lfm_dr.fit`` runs on them first.

The trainer asks for batches by data-set index (its own deterministic order). :class:`UserData`
serves them: labels come from ``.targets`` / ``.labels`` / a ``TensorDataset``'s tensors without
decoding a single image, in-memory tensors are indexed directly, and any other dataset is read
through a ``DataLoader``: its ``num_workers`` processes load the training batches ahead of the
loop (their order is known in advance) and split every other batch, always in the trainer's order.
"""

from __future__ import annotations

import difflib
from collections import deque
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from lfm_core.errors import UsageError


def labels_of(data: Dataset) -> Tensor:
    """Every label of ``data``, read without loading images wherever the dataset keeps them."""
    if isinstance(data, Subset):
        return labels_of(data.dataset)[torch.as_tensor(list(data.indices), dtype=torch.long)]
    if isinstance(data, TensorDataset) and len(data.tensors) >= 2:
        return data.tensors[1]
    if getattr(data, "target_transform", None) is None:  # otherwise the items' labels differ from .targets
        for attr in ("labels", "targets"):
            values = getattr(data, attr, None)
            if values is not None and len(values) == len(data):
                try:
                    return torch.as_tensor(values)
                except (TypeError, ValueError, RuntimeError):
                    break
    return torch.tensor([int(data[i][1]) for i in range(len(data))])  # no label attribute: one pass


def _collate(items: list) -> tuple[Tensor, Tensor]:
    return torch.stack([it[0] for it in items]), torch.tensor([int(it[1]) for it in items])


class _Requested:
    """The DataLoader's batch sampler: the chunks of the batch being fetched, one per worker."""

    def __init__(self) -> None:
        self.chunks: list[list[int]] = []

    def __iter__(self):
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)


class _Planned:
    """The look-ahead loader's batch sampler: the planned batches, each noted as it is handed out
    (the loader returns them in this order)."""

    def __init__(self, batches: Iterator[Tensor]):
        self.batches, self.handed_out = batches, deque()

    def __iter__(self):
        for idx in self.batches:
            self.handed_out.append(idx)
            yield idx.tolist()


class UserData(Dataset):
    """A dataset whose items start with ``(image, label)``, with ``labels`` and batch ``fetch``.

    ``plan(idx)``, when given, returns the batches the trainer will ask for from ``idx`` on (or None):
    the workers then load them ahead while the model trains. A batch off the plan is fetched on its
    own (workers split it), so the order is always the trainer's."""

    MAX_REPLANS = 3  # a plan that keeps missing (e.g. a sharded launch) is given up

    def __init__(self, data: Dataset, num_workers: int = 0, labels: Tensor | None = None,
                 plan: Callable[[Tensor], Iterator[Tensor] | None] | None = None):
        self.data, self.plan, self._workers = data, plan, num_workers
        self.labels = (labels_of(data) if labels is None else labels).long()
        if isinstance(data, TensorDataset):  # in memory: the trainer indexes the tensor directly
            self.images = data.tensors[0]
        self._requested = _Requested()
        self._loader = self._ahead = self._planned = None
        self._replans = 0
        if num_workers > 0 and not isinstance(data, TensorDataset):
            self._loader = self._data_loader(self._requested, persistent_workers=True)

    def _data_loader(self, batch_sampler, **kw) -> DataLoader:
        # its own generator: creating the workers never draws from the training's global RNG
        return DataLoader(self.data, batch_sampler=batch_sampler, num_workers=self._workers, collate_fn=_collate,
                          generator=torch.Generator().manual_seed(0), **kw)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        item = self.data[i]
        return item[0], int(item[1]), i

    def close(self) -> None:
        """Stop the worker processes (they otherwise live as long as this reader)."""
        self._loader = self._ahead = self._planned = None

    def fetch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """The images of ``idx`` in that order, and their labels."""
        if self._loader is None:
            return torch.stack([self.data[int(i)][0] for i in idx]), self.labels[idx]
        if self._ahead is not None:
            x, _ = next(self._ahead, (None, None))
            if x is not None and torch.equal(self._planned.handed_out.popleft(), idx):
                return x, self.labels[idx]
            self._ahead = self._planned = None  # off the plan (first batch, resume): plan again
        batches = self.plan(idx) if self.plan is not None and self._replans < self.MAX_REPLANS else None
        self._replans += self.plan is not None
        if batches is not None:
            self._planned = _Planned(batches)
            self._ahead = iter(self._data_loader(self._planned))
            x, _ = next(self._ahead)
            self._planned.handed_out.popleft()
            return x, self.labels[idx]
        self._requested.chunks = [c.tolist() for c in idx.chunk(self._workers) if len(c)]
        return torch.cat([xb for xb, _ in self._loader]), self.labels[idx]  # the chunks in order


# ------------------------------------------------------------------------------------
# checks before training
# ------------------------------------------------------------------------------------
def check_options(method: str, known: tuple[str, ...] | None, options: dict[str, Any]) -> None:
    """Every option name must be one the method reads (``known=None``: the method declares none)."""
    if known is None:
        return
    for name in options:
        if name not in known and not known:
            raise UsageError(f"unknown option {name!r}: method {method!r} takes no options")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"unknown option {name!r} for method {method!r}.{hint} "
                             f"Valid options: {', '.join(sorted(known))}.")


def check_labels(labels: Tensor, num_classes: int, name: str) -> None:
    if len(labels) == 0:
        raise UsageError(f"the {name} set is empty; give it at least one example")
    if labels.dim() != 1 or labels.is_floating_point() and not bool((labels == labels.round()).all()):
        shown = labels[0].tolist() if labels.dim() > 1 else float(labels[labels != labels.round()][0])
        raise UsageError(f"the {name} set's labels must be class indices 0..{num_classes - 1}, got {shown}")
    bad = (labels < 0) | (labels >= num_classes)
    if bool(bad.any()):
        value, top = int(labels[bad][0]), int(labels.max())
        hint = f" (set num_classes={top + 1}?)" if top >= num_classes else ""
        raise UsageError(f"the {name} set has label {value}, outside [0, num_classes={num_classes}): "
                         f"labels must be class indices 0..{num_classes - 1}{hint}")


def image_shape(data: Dataset, name: str) -> torch.Size:
    """The [C, H, W] shape of the first image (one item read)."""
    x = data.tensors[0][0] if isinstance(data, TensorDataset) else data[0][0]
    if not isinstance(x, Tensor) or x.dim() != 3:
        got = f"a tensor of shape {list(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise UsageError(f"the {name} set's items must start with an image tensor [C, H, W], got {got} "
                         "(give the dataset a transform such as torchvision.transforms.ToTensor())")
    return x.shape


def built_on_meta(build: Callable[[], nn.Module]) -> nn.Module | None:
    """The module ``build`` makes, on the meta device (no memory, no weights), to inspect its shape;
    None when it cannot be built there (the real build reports its own errors). TypeError (bad
    keyword arguments) propagates."""
    try:
        with torch.device("meta"):
            return build()
    except TypeError:
        raise
    except Exception:
        return None


def input_channels(module: nn.Module | None) -> int | None:
    """Input channels of the module's first convolution (None: no module or no convolution)."""
    if module is None:
        return None
    conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else conv.in_channels


def check_channels(channels: int, expected: int | None, what: str) -> None:
    if expected is not None and channels != expected:
        raise UsageError(
            f"the images have {channels} channel{'s' if channels != 1 else ''} but {what} expects {expected}; "
            f"convert them (e.g. x.expand({expected}, -1, -1) or transforms.Grayscale(num_output_channels={expected}))"
            if channels == 1 else
            f"the images have {channels} channels but {what} expects {expected}; convert them to {expected} channels"
        )


def class_to_idx(data: Dataset) -> dict[str, int] | None:
    while isinstance(data, Subset):
        data = data.dataset
    return getattr(data, "class_to_idx", None)


def check_same_classes(train: Dataset, other: Dataset, name: str) -> None:
    """ImageFolders index classes by their sorted folder names: a missing folder shifts every label."""
    mine, theirs = class_to_idx(train), class_to_idx(other)
    if mine is None or theirs is None or mine == theirs:
        return
    only_train, only_other = sorted(set(mine) - set(theirs)), sorted(set(theirs) - set(mine))
    if only_train or only_other:
        diff = f"classes only in train: {only_train}, only in {name}: {only_other}"
    else:
        cls = next(c for c in mine if mine[c] != theirs[c])
        diff = f"class {cls!r} is {mine[cls]} in train and {theirs[cls]} in {name}"
    raise UsageError(f"the {name} set's class_to_idx differs from the training set's ({diff}); give every "
                     "ImageFolder the same class folders so a label means the same class in each")
