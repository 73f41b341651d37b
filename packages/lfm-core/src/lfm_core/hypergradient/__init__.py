"""The hypergradient engines of the tri-level solver, one function each behind one signature.

An engine takes the solver's :class:`~lfm_core.hypergradient.steps.Setup` and one step's
problem, runs the two real steps of Algorithm 1 and the meta loss, and returns a
:class:`~lfm_core.hypergradient.steps.Hypergradient` (it raises
:class:`~lfm_core.hypergradient.steps.SkippedStep` when a real step is not finite).

A one-step unroll ``W' = W - lr * grad_W loss(W, lam)`` contributes
``dL/dlam = -lr * grad_lam <grad_W loss(W, lam), g>`` with ``g = dL/dW'``; this
"mixed vector product" is what the engines compute differently:

* ``exact``: reverse-over-forward autodiff: a forward-mode JVP of the loss along ``g``
  gives ``<grad_W loss, g>`` as a function of ``lam``, whose reverse gradient is exact.
  No double backward; for per-example weights ``lam`` the reverse pass is trivial.
* ``exact-reverse``: the same exact hypergradient by reverse-over-reverse autodiff on the graphs
  the real steps already build (no re-run forwards, no forward mode, at the memory of the held
  graphs; under autocast the products run in the real steps' precision).
* ``finite-difference``: DARTS-style central differences
  ``(grad_lam loss(W + eps g) - grad_lam loss(W - eps g)) / 2 eps``; no graph through W.
* ``forward-difference``: one-sided differences
  ``(grad_lam loss(W + eps g) - grad_lam loss(W)) / eps`` whose second term comes free with
  the real optimiser step at ``W`` (its backward also fills ``grad_lam``): one training-batch
  forward per product instead of two, at an O(eps) truncation error instead of O(eps^2).
* ``first-order``: all terms through the unrolled steps are dropped; only the direct
  dependence of ``loss3`` on the upper variables remains.
"""

from __future__ import annotations

from typing import Callable, Literal

from lfm_core.errors import check_choice
from lfm_core.hypergradient import forward, reverse
from lfm_core.hypergradient.steps import Hypergradient, Setup

EngineFn = Callable[[Setup, object], Hypergradient]
Engine = Literal["exact", "exact-reverse", "finite-difference", "forward-difference", "first-order"]

ENGINES: dict[str, EngineFn] = {
    "exact": forward.exact,
    "exact-reverse": reverse.exact_reverse,
    "finite-difference": forward.finite_difference,
    "forward-difference": forward.forward_difference,
    "first-order": forward.first_order,
}
# the engines whose hypergradients are equal to rounding (the others approximate it)
EXACT_ENGINES = ("exact", "exact-reverse")


def check_engine(engine: str) -> str:
    check_choice("hypergradient engine", engine, ENGINES)
    return engine


def default_fd_eps(engine: str) -> float:
    """The step length of the difference engines: DARTS's 0.01 for central differences; the
    one-sided ones' truncation error is first order, so they step 1e-3 (benchmarks/step_cost.py,
    fwd_rel_err, compares it with the exact hypergradient)."""
    return 1e-3 if engine == "forward-difference" else 0.01
