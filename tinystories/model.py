"""The GPT-2 model: learned positions, pre-LayerNorm blocks, GELU (tanh), causal attention through
`scaled_dot_product_attention`, and an output head tied to the token embedding.

Shapes: B batch, T time (sequence), C channels (n_embd), H heads, hs = C // H head size,
V vocab size (50257), Vp padded vocab size (50304, the rows stored in wte).

The token embedding keeps llm.c's Vp rows so files round-trip byte for byte; rows V..Vp-1 are zero,
are never looked up, and are left out of the output head, so they stay zero throughout training.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import llmc
from .config import GPTConfig
from .formats import ModelFile, read_model


class KVCache:
    """Keys and values of the positions seen so far, one (B, H, block_size, hs) buffer pair per layer."""

    def __init__(self, config: GPTConfig, batch: int, device, dtype):
        shape = (batch, config.n_head, config.block_size, config.n_embd // config.n_head)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.length = 0  # positions filled so far

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, H, t, hs) after the cached positions; return all keys and values so far."""
        start, end = self.length, self.length + k.size(2)
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hs)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            past = cache.length
            k, v = cache.append(layer, k, v)  # (B, H, past + T, hs)
            # query i (absolute position past + i) sees keys 0 .. past + i
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, cache: KVCache | None = None, layer: int = 0):
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


def plain_head_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the logits h @ weight.T against targets; the reference formulation.
    h: (N, C), weight: (V, C), targets: (N,) int64."""
    logits = F.linear(h, weight)  # (N, V)
    return F.cross_entropy(logits.float(), targets)


class GPT(nn.Module):
    """head_loss computes the output layer + loss from the final hidden states (see plain_head_loss); the
    trainer passes a fused version (registry.HEAD_LOSSES) that computes the same numbers faster."""

    def __init__(self, config: GPTConfig, head_loss=plain_head_loss):
        super().__init__()
        config.validate()
        self.config = config
        self.wte = nn.Embedding(config.padded_vocab_size, config.n_embd)  # (Vp, C), also the output head
        self.wpe = nn.Embedding(config.block_size, config.n_embd)  # (T, C)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head_loss = head_loss

    def init_weights(self, seed: int, zero_proj: bool = False) -> None:
        """GPT-2 initialisation: N(0, 0.02) for weights and embeddings, N(0, 0.02 / sqrt(2 L)) for the
        projections into the residual stream (zero_proj: zero, every other value unchanged), zero
        biases, LayerNorm weight 1, zero padding rows."""
        generator = torch.Generator().manual_seed(seed)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    p.normal_(0.0, residual_std, generator=generator)
                elif p.dim() == 2:
                    p.normal_(0.0, 0.02, generator=generator)
                elif ".ln_" in name or name.startswith("ln_f"):
                    p.fill_(1.0 if name.endswith("weight") else 0.0)
                else:
                    p.zero_()
            self.wte.weight[self.config.vocab_size :].zero_()
            if zero_proj:
                for name, p in self.named_parameters():
                    if name.endswith("c_proj.weight"):
                        p.zero_()

    def head_weight(self) -> torch.Tensor:
        return self.wte.weight[: self.config.vocab_size]  # (V, C): padding rows never score

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final hidden states (B, T, C) for token ids idx (B, T); with a cache, idx continues it."""
        B, T = idx.size()
        start = cache.length if cache is not None else 0
        assert start + T <= self.config.block_size, f"sequence of {start + T} exceeds block size {self.config.block_size}"
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, C)
        for layer, block in enumerate(self.h):
            x = block(x, cache, layer)
        if cache is not None:
            cache.length += T
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """With targets (B, T): the mean cross-entropy loss. Without: logits (B, T, V)."""
        x = self.hidden(idx)  # (B, T, C)
        if targets is None:
            return F.linear(x, self.head_weight())  # (B, T, V)
        C = x.size(-1)
        return self.head_loss(x.view(-1, C), self.head_weight(), targets.reshape(-1))

    @torch.no_grad()
    def next_logits(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits (B, V) of the token after idx (B, t), which continues what the cache holds."""
        x = self.hidden(idx, cache)[:, -1, :]  # (B, C)
        return F.linear(x, self.head_weight()).float()


def read_gpt(path, head_loss=plain_head_loss) -> "tuple[GPT, ModelFile]":
    """The GPT in the llm.c model file or checkpoint at `path` (fp32, on the CPU), and the file it came
    from, training state included: the one way train, eval and generate load a model."""
    model_file = read_model(path)
    return llmc.load_params(GPT(model_file.config, head_loss), model_file.params), model_file
