"""Two CPU processes (gloo, Accelerate's debug launcher) give the same upper-level update as one
process on the same global batch: DDP has no double backward, so the solver averages per-process
hypergradients explicitly."""

import os
import socket
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lfm_core.runtime import all_reduce_mean
from lfm_core.solver import TriLevelSolver
from lfm_core.weighting import lfm_weights

N_TR, N_VAL, D, K = 8, 4, 5, 3


def data():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N_TR, D, generator=g), torch.randint(0, K, (N_TR,), generator=g)
    xv, yv = torch.randn(N_VAL, D, generator=g), torch.randint(0, K, (N_VAL,), generator=g)
    y[:2] = yv[:2]
    return x, y, xv, yv


class Problem:
    def __init__(self, w1, w2, enc, x, y, idx, xv, yv):
        self.w1, self.w2, self.enc = w1, w2, enc
        self.x, self.y, self.idx, self.xv, self.yv = x, y, idx, xv, yv

    def loss1(self, w1, upper):
        losses = F.cross_entropy(functional_call(self.w1, w1, (self.x,)), self.y, reduction="none")
        return (upper["b"][self.idx] * losses).mean()

    def weights(self, w1, upper):
        u = F.cross_entropy(functional_call(self.w1, w1, (self.xv,)), self.yv, reduction="none")
        enc = {k[2:]: v for k, v in upper.items() if k.startswith("V.")}
        f = functional_call(self.enc, enc, (torch.cat([self.x, self.xv]),))
        return lfm_weights(f[: len(self.x)], f[len(self.x):], self.y, self.yv, u, upper["r"])

    def loss2(self, w2, a, upper):
        return (a * F.cross_entropy(functional_call(self.w2, w2, (self.x,)), self.y, reduction="none")).mean()

    def loss3(self, w2, upper):
        return F.cross_entropy(functional_call(self.w2, w2, (self.xv,)), self.yv)


ENGINES = ("exact", "exact-reverse")


def one_step(rank: int, world: int, accelerator=None, engine: str = "exact") -> dict:
    torch.manual_seed(0)
    w1, w2 = nn.Sequential(nn.Linear(D, 6), nn.Tanh(), nn.Linear(6, K)), nn.Sequential(nn.Linear(D, K))
    enc = nn.Linear(D, 4)
    upper = {"b": torch.ones(N_TR, requires_grad=True), "r": torch.ones(N_VAL, requires_grad=True)}
    upper.update({f"V.{k}": p for k, p in enc.named_parameters()})
    opt1 = torch.optim.SGD(w1.parameters(), lr=0.5, momentum=0.9)
    opt2 = torch.optim.SGD(w2.parameters(), lr=0.5, momentum=0.9)
    up = torch.optim.Adam(list(upper.values()), lr=0.1)
    solver = TriLevelSolver(w1, w2, upper, opt1, opt2, up, engine=engine, modules=[enc],
                            reduce=all_reduce_mean(accelerator))
    x, y, xv, yv = data()
    # each process takes its shard of the training batch; the validation batch is shared
    idx = torch.arange(N_TR)[rank::world]
    for _ in range(2):
        solver.step(Problem(w1, w2, enc, x[idx], y[idx], idx, xv, yv))
    return {"b": upper["b"].detach().clone(), "r": upper["r"].detach().clone(),
            "V": enc.weight.detach().clone(), "w2": w2[0].weight.detach().clone()}


def test_two_processes_equal_one_process(tmp_path):
    """Two launched processes (torchrun, gloo; Accelerate picks up the environment) against one."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", port,
           __file__, str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    saved = sorted(p.name for p in tmp_path.glob("rank*.pt"))
    assert proc.returncode == 0, (saved, proc.stderr[:1500], proc.stderr[-3000:])
    reference = one_step(0, 1)
    for rank in (0, 1):
        for engine in ENGINES:  # the graph-reuse engine averages the same terms
            got = torch.load(tmp_path / f"rank{rank}-{engine}.pt", weights_only=True)
            for key in reference:
                torch.testing.assert_close(got[key], reference[key], rtol=1e-5, atol=1e-6, msg=(engine, key))
    assert not torch.allclose(reference["b"], torch.ones(N_TR))  # the update did something


if __name__ == "__main__":  # one process of the launched pair
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    assert acc.num_processes == 2, acc.state
    for engine in ENGINES:
        result = one_step(acc.process_index, acc.num_processes, acc, engine)
        torch.save(result, os.path.join(sys.argv[1], f"rank{acc.process_index}-{engine}.pt"))
    acc.wait_for_everyone()
    torch.distributed.destroy_process_group()  # gloo aborts at exit when the group is left open
    # gloo's threads can still std::terminate during interpreter finalization (seen once in CI:
    # "terminate called without an active exception", SIGABRT); the results are saved and the
    # barrier passed, so leave without finalization.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
