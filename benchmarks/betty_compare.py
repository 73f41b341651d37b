"""lfm_core's tri-level solver against Betty on the same 3-level LFM-DR problem, side by side.

The problem (small MLPs, b-weighted W1, a-weighted W2, Adam on (b, V, r)) is defined in
``three_level.py``; ``peers.py`` adds TorchOpt and higher. Reported: median seconds per step
after warm-up, and a plain SGD step of the MLP as the unit.

    pip install --ignore-requires-python -c constraints.txt betty-ml==0.2.1
    python benchmarks/betty_compare.py [--write benchmarks/results]   # last line: one JSON object
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from three_level import LR1, LR2, SETUP, betty_step_fn, build, core_step_fn, cosine, interleaved_medians, \
    plain_step_fn


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", type=Path, default=None, help="folder for betty.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    try:
        import betty
    except ImportError:
        print("betty is not installed: pip install --ignore-requires-python -c constraints.txt betty-ml==0.2.1",
              file=sys.stderr)
        return 2
    device = torch.device(args.device)
    d, models = build(device)

    plain_step = plain_step_fn(d, models)
    exact, fd = core_step_fn("exact", d, models), core_step_fn("finite-difference", d, models)
    fwd = core_step_fn("forward-difference", d, models)
    betty_grads: dict = {}
    betty_step = betty_step_fn(d, models, device, betty_grads)
    core_grads = exact()  # the first step of each (from the same initial state) gives the hypergradients
    betty_step()
    names = {"r": ["r"], "b": ["b"], "V": [k for k in betty_grads if k.startswith("V.")]}
    cos = {k: cosine(torch.cat([betty_grads[n].flatten() for n in ns]), torch.cat([core_grads[n].flatten() for n in ns]))
           for k, ns in names.items()}
    # Betty's "darts" is DARTS read as implicit differentiation: the best-response Jacobian of a level
    # is -d2 L/dw dlam, without the inner learning rate that the one-step unroll of lfm_core has, and it is
    # evaluated at the stepped weights W' instead of W. So Betty's hypergradient is lfm_core's scaled by
    # 1/lr2 for r and V, 1/(lr1 lr2) for b (path through both levels), up to that O(lr) shift; the cosines
    # stay near 1. Adam is invariant to a constant gradient scale (up to its eps), so with the same learning
    # rates both take nearly the same upper steps (b and r agree to a few % after 5-10 steps, then drift).
    scale = {k: float(betty_grads[k].norm() / core_grads[k].norm()) for k in ("r", "b")}

    plain_s, exact_s, fd_s, fwd_s, betty_s = interleaved_medians([plain_step, exact, fd, fwd, betty_step], device,
                                                                 args.warmup, args.repeat)
    result = {
        "plain_step_s": plain_s, "lfm_exact_step_s": exact_s, "lfm_fd_step_s": fd_s, "lfm_fwd_step_s": fwd_s,
        "betty_step_s": betty_s,
        "speedup_vs_betty_exact": betty_s / exact_s, "speedup_vs_betty_fd": betty_s / fd_s,
        "speedup_vs_betty_fwd": betty_s / fwd_s,
        "ratios": {"lfm_exact": exact_s / plain_s, "lfm_fd": fd_s / plain_s, "lfm_fwd": fwd_s / plain_s,
                   "betty": betty_s / plain_s},
        "cosine_r": cos["r"], "cosine_b": cos["b"], "cosine_V": cos["V"],
        "betty_grad_scale": {**scale, "expected_r": 1 / LR2, "expected_b": 1 / (LR1 * LR2)},
        "betty_version": betty.__version__, "torch": torch.__version__, "device": str(device),
        "threads": torch.get_num_threads(),
        "setup": f"{SETUP}, median of {args.repeat} steps after {args.warmup}",
    }
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        tmp = args.write / ".betty.json.tmp"
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(args.write / "betty.json")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
