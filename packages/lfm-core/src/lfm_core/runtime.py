"""Seeding, RNG state capture, CPU threads, and cross-process gradient averaging."""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def rng_state() -> dict[str, Any]:
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[2] or 0],
        "python_version": random.getstate()[0],
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((state["python_version"], tuple(int(v) for v in py[:-1]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def all_reduce_mean(accelerator):
    """A `reduce` hook for the solver: average gradients over processes (DDP has no double backward)."""
    if accelerator is None or accelerator.num_processes == 1:
        return None
    import torch.distributed as dist

    world = accelerator.num_processes

    def reduce(tensors: list[torch.Tensor]) -> None:
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t.div_(world)

    return reduce


@contextlib.contextmanager
def cpu_threads(device: torch.device, profile: str):
    """One intra-op thread for the tiny smoke/cpu models on CPU, unless OMP_NUM_THREADS is set.

    Their tensors are so small that OpenMP's fork/join costs more than it saves, and on a
    shared 2-core machine a second thread that is descheduled stalls every parallel region
    (measured: a C=4 supernet forward/backward 0.24 s with one thread, 1-15 s with two).
    """
    if device.type != "cpu" or profile == "paper" or os.environ.get("OMP_NUM_THREADS"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
