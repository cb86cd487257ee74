"""What the benchmarks share: timing (the best of rounds, the device synchronised) and the matrix-product
peak that FLOP/s are measured against.

The scripts import it as a sibling module (`from common import ...`): Python puts a script's own
folder on sys.path, and `tinystories` comes from the editable install (pip install -e .).
"""
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


def synchronize(device: torch.device | None) -> None:
    """Wait for the work queued on `device` so far (CUDA, MPS; the CPU has nothing queued)."""
    if device is None:
        return
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@dataclass
class Timing:
    """One function's timings: seconds per call in each timed round, by the wall clock (wall) and in
    CPU time of this process, all its threads (cpu, which counts no time spent waiting for a core
    another program holds); the seconds its warm-up took; what its last call returned."""
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    warmup_s: float = 0.0
    result: object = None

    @property
    def best(self) -> float:
        """Seconds per call in the best round: the figure least disturbed by other load (with one
        round, the mean over its calls)."""
        return min(self.wall)

    @property
    def median(self) -> float:
        return sorted(self.wall)[len(self.wall) // 2]

    @property
    def best_cpu(self) -> float:
        return min(self.cpu)


def best_of_rounds(runs: dict[str, Callable[[], object]] | Callable[[], object], rounds: int, calls: int = 1,
                   warmup: int = 0, device: torch.device | None = None) -> dict[str, Timing] | Timing:
    """Time functions of no arguments (`runs`: name -> function, or one function): `warmup` untimed
    calls of each, then `rounds` rounds in which each is called `calls` times in turn, so a change in
    the machine's load hits all of them alike. The device is synchronised after each warm-up and, inside
    the timing, after each function's calls in a round. Returns name -> Timing (a Timing for one
    function); Timing.best is the best round's seconds per call."""
    table = {None: runs} if callable(runs) else dict(runs)
    timings = {name: Timing() for name in table}
    for name, run in table.items():
        start = time.perf_counter()
        for _ in range(warmup):
            run()
        synchronize(device)
        timings[name].warmup_s = time.perf_counter() - start
    for _ in range(rounds):
        for name, run in table.items():
            timing = timings[name]
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                timing.result = run()
            synchronize(device)
            timing.wall.append((time.perf_counter() - start_wall) / calls)
            timing.cpu.append((time.process_time() - start_cpu) / calls)
    return timings[None] if callable(runs) else timings


def matmul_peak(n: int, device: torch.device, dtype: torch.dtype, rounds: int = 1, calls: int = 1,
                warmup: int = 1) -> float:
    """FLOP/s of an (n, n) @ (n, n) product on random data (torch.mm into one output tensor, on all
    intra-op threads on the CPU): the best of `rounds` rounds of `calls` products, after `warmup`."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    seconds = best_of_rounds(lambda: torch.mm(a, b, out=out), rounds, calls, warmup, device).best
    return 2 * n ** 3 / seconds
