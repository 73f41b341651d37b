"""Seeding, RNG state capture, CPU threads, cross-process gradient averaging, peak memory."""

from __future__ import annotations

import contextlib
import ctypes
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
    numpy_state = np.random.get_state()
    assert isinstance(numpy_state, tuple)  # the legacy form: (name, keys, pos, has_gauss, gauss)
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[2] or 0],
        "python_version": random.getstate()[0],
        "numpy": torch.from_numpy(numpy_state[1].astype(np.int64)),
        "numpy_pos": int(numpy_state[2]),
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


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """torch's default floating-point dtype inside the block, restored afterwards (e.g. float64
    for brute-force finite-difference checks)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def check_device(device: str | None) -> None:
    """A --device that names no usable device fails here, in one line, before any work."""
    from lfm_core.errors import LFMError, UsageError

    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"unknown --device {device!r}. Valid choices: cpu, cuda, cuda:<index>, mps.") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise LFMError(f"--device {device}: no CUDA GPU is visible to torch here; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise LFMError(f"--device {device}: this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise LFMError(f"--device {device}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {device!r} is not supported. Valid choices: cpu, cuda, cuda:<index>, mps.")


def launched_processes() -> int:
    """How many processes ``accelerate launch`` / ``torchrun`` started (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 of a launch (or a plain run): the one process that writes files and prints."""
    return int(os.environ.get("RANK", "0")) == 0


_ACCELERATOR: Any = None


def process_accelerator(device: str | torch.device | None = None) -> Any:
    """The process group of a multi-process launch, as an ``accelerate.Accelerator`` (gloo on
    CPU: ``device`` cpu, or none given and no GPU), created once, by its first caller;
    ``None`` when the process was not launched with several processes."""
    global _ACCELERATOR
    if launched_processes() <= 1:
        return None
    if _ACCELERATOR is None:
        from accelerate import Accelerator

        cpu = torch.device(device).type == "cpu" if device is not None else not torch.cuda.is_available()
        _ACCELERATOR = Accelerator(cpu=cpu)
    return _ACCELERATOR


MIXED_PRECISION = ("no", "fp16", "bf16")


def launch_mixed_precision(requested: str | None) -> str:
    """The run's mixed precision: ``--mixed-precision`` if given, else the one ``accelerate launch
    --mixed_precision`` set (``ACCELERATE_MIXED_PRECISION``), else "no"; a conflict between the
    two, or a launch setting this suite does not run (fp8), is refused in one line. Also refuses
    ``accelerate launch --cpu --num_processes N``, which starts one process only (accelerate 1.x)."""
    from lfm_core.errors import UsageError, check_choice

    env = os.environ
    if env.get("ACCELERATE_USE_CPU", "").lower() == "true" and env.get("MASTER_ADDR") and "WORLD_SIZE" not in env:
        raise UsageError("`accelerate launch --cpu --num_processes N` starts a single process; for several CPU "
                         "processes use `accelerate launch --multi_gpu --num_processes N` (gloo) or "
                         "`torchrun --nproc_per_node N`")
    launched = env.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launched != "no":
        check_choice("accelerate launch --mixed_precision", launched, MIXED_PRECISION)
        if requested not in (None, launched):
            raise UsageError(f"--mixed-precision {requested} conflicts with `accelerate launch --mixed_precision "
                             f"{launched}`; give one of them")
        return launched
    return requested or "no"


def launch_compile(requested: bool) -> bool:
    """Whether the run compiles its networks: ``--compile``, or ``accelerate launch --dynamo_backend
    inductor`` (``ACCELERATE_DYNAMO_BACKEND``); another dynamo backend is refused in one line."""
    from lfm_core.errors import UsageError

    launched = os.environ.get("ACCELERATE_DYNAMO_BACKEND", "no").lower()
    if launched not in ("no", "inductor"):
        raise UsageError(f"`accelerate launch --dynamo_backend {launched}` is not supported; "
                         "valid choices: no, inductor (or pass --compile)")
    return bool(requested) or launched == "inductor"


def compile_module(module: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` a network in place (inductor, default mode). In place, not wrapped: its
    ``state_dict`` keys and so its checkpoints stay those of the plain module, and
    ``functional_call`` still swaps its parameters. Passes under a forward-mode transform
    (the exact engine's products) run eagerly."""
    module.compile()
    return module


def wait_for_everyone() -> None:
    """A barrier across launched processes (no-op in a single process)."""
    if _ACCELERATOR is not None:
        _ACCELERATOR.wait_for_everyone()


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


# ------------------------------------------------------------------------------------
# peak memory of one call (CPU: growth of the peak resident set; CUDA: max allocated)
# ------------------------------------------------------------------------------------
def _status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
_strict_malloc = False


def _release_freed_tensors() -> bool:
    """Fix glibc's mmap threshold at 4 KiB so that every freed tensor of that size or more goes
    back to the OS at once. By default the threshold grows to 32 MiB after the first frees,
    after which freed activations stay in the heap and the resident set remembers every
    earlier graph. Process-wide and for good (allocation gets a little slower), so it is for
    measurement runs only."""
    global _strict_malloc
    if not _strict_malloc:
        try:
            _strict_malloc = bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 4096))
        except (OSError, AttributeError):
            return False
    return _strict_malloc


class PeakMemory:
    """Peak memory of the code run inside ``with PeakMemory(device) as m: ...`` (``m.peak_mb``).

    CUDA: ``torch.cuda.max_memory_allocated`` (reset on entry). CPU (Linux): freed heap is
    returned to the OS (``malloc_trim``), the kernel's peak-RSS mark is reset
    (``/proc/self/clear_refs``) and the result is the growth of ``VmHWM`` over the resident set
    at entry, so earlier runs in the same process do not hide this one. ``strict=True``
    (benchmarks) also makes freed tensors leave the resident set at once (see
    :func:`_release_freed_tensors`), so the CPU figure tracks live tensors like the CUDA one.
    Elsewhere ``None``.
    """

    def __init__(self, device: torch.device | str, strict: bool = False):
        self.device = torch.device(device)
        self.strict = strict
        self.peak_mb: float | None = None
        self._base: float | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        if self.strict:
            _release_freed_tensors()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self._base = _status_mb("VmRSS")
        except OSError:
            self._base = None
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._base is not None:
            hwm = _status_mb("VmHWM")
            self.peak_mb = None if hwm is None else max(0.0, hwm - self._base)
