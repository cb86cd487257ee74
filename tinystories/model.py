"""The GPT model, its block chosen by GPTConfig's architecture fields; the default is GPT-2's: learned
positions, pre-LayerNorm blocks, GELU (tanh), causal attention through `scaled_dot_product_attention`,
and an output head tied to the token embedding. The Llama-style block (create_model.py --arch llama)
is rotary positions, RMSNorm, a SwiGLU MLP and no biases, with optionally fewer kv heads.

Shapes: B batch, T time (sequence), C channels (n_embd), H heads, KV kv heads (H by default),
hs = C // H head size, F the MLP's hidden width, V vocab size (50257), Vp padded vocab size (50304,
the rows stored in wte).

The token embedding keeps llm.c's Vp rows so files round-trip byte for byte; rows V..Vp-1 are zero,
are never looked up, and are left out of the output head, so they stay zero throughout training.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import llmc
from .config import NORM_EPS, GPTConfig
from .formats import ModelFile, read_model


class KVCache:
    """Keys and values of the positions seen so far, one (B, KV, block_size, hs) buffer pair per layer."""

    def __init__(self, config: GPTConfig, batch: int, device, dtype):
        shape = (batch, config.kv_heads, config.block_size, config.head_size)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.length = 0  # positions filled so far

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, KV, t, hs) after the cached positions; return all keys and values so far."""
        start, end = self.length, self.length + k.size(2)
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


def rotary(positions: torch.Tensor, config: GPTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (T, hs), fp32, of rotary position embedding at `positions` (T,): pair j of a head
    (dimensions j and j + hs/2, Hugging Face Llama's layout) turns by position * theta^(-2j/hs)."""
    hs = config.head_size
    inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, hs, 2, device=positions.device, dtype=torch.float32) / hs)
    angles = torch.outer(positions.float(), inv_freq)  # (T, hs/2)
    angles = torch.cat((angles, angles), dim=-1)  # (T, hs)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, heads, T, hs) with each pair (j, j + hs/2) rotated by its angle."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat((-x2, x1), dim=-1) * sin.to(x.dtype)


def norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=NORM_EPS)
    return nn.LayerNorm(config.n_embd, eps=NORM_EPS, bias=config.bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_size = config.n_head, config.kv_heads, config.head_size
        qkv = (self.n_head + 2 * self.n_kv_head) * self.head_size
        self.c_attn = nn.Linear(config.n_embd, qkv, bias=config.bias)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x, rope=None, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.size()
        H, KV, hs = self.n_head, self.n_kv_head, self.head_size
        q, k, v = self.c_attn(x).split([H * hs, KV * hs, KV * hs], dim=2)
        q = q.view(B, T, H, hs).transpose(1, 2)  # (B, H, T, hs)
        k, v = (t.view(B, T, KV, hs).transpose(1, 2) for t in (k, v))  # (B, KV, T, hs)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            past = cache.length
            k, v = cache.append(layer, k, v)  # (B, KV, past + T, hs)
        if KV != H:  # grouped-query attention: each kv head serves H / KV query heads
            k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)  # (B, H, ., hs)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # query i (absolute position past + i) sees keys 0 .. past + i
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.hidden_size, bias=config.bias)
        self.c_gate = nn.Linear(config.n_embd, config.hidden_size, bias=config.bias) if config.mlp == "swiglu" else None
        self.c_proj = nn.Linear(config.hidden_size, config.n_embd, bias=config.bias)

    def forward(self, x):
        if self.c_gate is None:
            return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))
        return self.c_proj(F.silu(self.c_gate(x)) * self.c_fc(x))  # (B, T, F) -> (B, T, C)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rope=None, cache: KVCache | None = None, layer: int = 0):
        x = x + self.attn(self.ln_1(x), rope, cache, layer)
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
        if config.position == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)  # (T, C)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = norm(config)
        if not config.tied_head:
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # (V, C)
        self.head_loss = head_loss

    def init_weights(self, seed: int, zero_proj: bool = False) -> None:
        """GPT-2 initialisation: N(0, 0.02) for weights and embeddings, N(0, 0.02 / sqrt(2 L)) for the
        projections into the residual stream (zero_proj: zero, every other value unchanged), zero
        biases, norm weights 1, zero padding rows."""
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
        if not self.config.tied_head:
            return self.lm_head.weight  # (V, C)
        return self.wte.weight[: self.config.vocab_size]  # (V, C): padding rows never score

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final hidden states (B, T, C) for token ids idx (B, T); with a cache, idx continues it."""
        B, T = idx.size()
        start = cache.length if cache is not None else 0
        assert start + T <= self.config.block_size, f"sequence of {start + T} exceeds block size {self.config.block_size}"
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.wte(idx)  # (B, T, C)
        if self.config.position == "learned":
            x = x + self.wpe(pos)
        rope = rotary(pos, self.config) if self.config.position == "rope" else None  # 2 x (T, hs)
        for layer, block in enumerate(self.h):
            x = block(x, rope, cache, layer)
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
    """The GPT in the model file or checkpoint at `path` (either kind, formats.py; fp32, on the CPU), and the file it came
    from, training state included: the one way train, eval and generate load a model."""
    model_file = read_model(path)
    return llmc.load_params(GPT(model_file.config, head_loss), model_file.params), model_file
