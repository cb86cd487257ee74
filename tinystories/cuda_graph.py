"""A whole training step replayed as one CUDA graph.

At the default model's size (7M parameters, 8,192 tokens per step) a step is a few hundred small
kernels whose launches, issued one by one from Python, take longer than the GPU needs to run them.
`CUDAGraphStep` records the step once (forward, backward, gradient clipping, the AdamW update and
the divergence guard) and then replays the recording with a single launch per step.

A recording reads and writes fixed memory, so the step it wraps must:
- take its batches as arguments: they are copied into the graph's own input buffers before each
  replay;
- keep every value that changes from step to step in a device tensor updated in place (the
  learning rate is a tensor the caller fills, the guard's counters are updated with in-place ops);
- never wait for the device (no .item(), no printing, no Python branch on a device value).
Its return values are the graph's output tensors: each replay overwrites them, so read them before
the next step.

The first `warmup` steps run eagerly on a side stream (as capture requires: it lets cuBLAS,
autograd and the optimizer create their state outside the recording); the next step is captured
and replayed, and every later one is replayed. Eager and replayed steps run the same kernels, so
they compute the same numbers, and a resumed run (which warms up again) matches an uninterrupted one.
"""
from collections.abc import Callable

import torch

Batches = list[tuple[torch.Tensor, torch.Tensor]]  # grad_accum x (x, y), each (B, T) on the device


class CUDAGraphStep:
    def __init__(self, step: Callable[[Batches], tuple], warmup: int = 3):
        self.step = step
        self.eager_left = warmup
        self.graph = None
        self.inputs: Batches = []
        self.outputs = ()

    def __call__(self, batches: Batches) -> tuple:
        if self.eager_left > 0:
            self.eager_left -= 1
            return self._eager_on_side_stream(batches)
        if self.graph is None:
            self._capture(batches)
        else:
            for (x, y), (static_x, static_y) in zip(batches, self.inputs):
                static_x.copy_(x, non_blocking=True)
                static_y.copy_(y, non_blocking=True)
        self.graph.replay()
        return self.outputs

    def _eager_on_side_stream(self, batches: Batches) -> tuple:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            outputs = self.step(batches)
        torch.cuda.current_stream().wait_stream(side)
        return outputs

    def _capture(self, batches: Batches) -> None:
        """Record one step on this step's batches (recording runs nothing: the replay that follows does)."""
        self.inputs = [(x.clone(), y.clone()) for x, y in batches]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.outputs = self.step(self.inputs)
        self.graph = graph
