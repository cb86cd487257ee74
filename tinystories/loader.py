"""The trainer's batch loader: (x, y) batches from a memory-mapped llm.c token file."""
from typing import TYPE_CHECKING

import numpy as np

from .errors import BadInput
from .formats import read_tokens

if TYPE_CHECKING:
    import torch


class TokenLoader:
    """Serves (x, y) batches of shape (B, T) from a token file, in file order, wrapping at the end.

    The file is memory-mapped, never loaded whole. One global batch is `world` x B windows of T+1
    tokens laid side by side (each window overlaps the next by one token); rank r takes windows
    r*B .. r*B+B-1, so ranks read disjoint slices. `position` is the token offset of the next
    global batch: it is the whole data state, saved in checkpoints, and means the same thing
    whatever the number of ranks.
    """

    def __init__(self, path, batch_size: int, seq_len: int, rank: int = 0, world: int = 1,
                 vocab_size: int | None = None, tokens: np.ndarray | None = None):
        if batch_size < 1 or seq_len < 1 or not 0 <= rank < world:
            raise ValueError(f"bad loader shape: batch {batch_size}, seq_len {seq_len}, rank {rank} of {world}")
        self.path, self.B, self.T, self.rank, self.world = path, batch_size, seq_len, rank, world
        self.tokens = read_tokens(path, vocab_size) if tokens is None else tokens  # tokens: the file, already read
        self.span = world * batch_size * seq_len  # tokens consumed by one global batch
        if self.tokens.size < self.span + 1:
            raise BadInput(f"{path}: {self.tokens.size} tokens, fewer than one batch needs "
                           f"({world} x {batch_size} x {seq_len} + 1 = {self.span + 1}); lower -b or -t")
        self.position = 0

    def batches_per_epoch(self) -> int:
        return (self.tokens.size - 1) // self.span

    def next_batch(self) -> "tuple[torch.Tensor, torch.Tensor]":
        """x, y: (B, T) int64 on the CPU; y is x shifted by one token."""
        import torch  # imported here: prepare_data.py never needs torch (a 4 s import)

        if self.position + self.span + 1 > self.tokens.size:
            self.position = 0
        start = self.position + self.rank * self.B * self.T
        window = np.asarray(self.tokens[start : start + self.B * self.T + 1], dtype=np.int64)
        self.position += self.span
        buf = torch.from_numpy(window)
        x = buf[:-1].view(self.B, self.T)
        y = buf[1:].view(self.B, self.T)
        return x, y
