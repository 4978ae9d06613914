"""Generate the official Adam-mini parity fixture ``official_llama_gqa.npz``.

What it produces
----------------
A tiny LLaMA-style causal LM (HuggingFace parameter names, PyTorch layout
``weight[out, in]``, grouped-query attention with rotary embeddings, RMSNorm,
SwiGLU MLP, untied ``lm_head``) is trained for a few steps with the OFFICIAL
PyTorch optimizer ``adam_mini.Adam_mini`` (PyPI ``adam-mini`` 1.1.1).  Every
quantity a JAX re-implementation needs to reproduce those steps exactly is
saved with :func:`numpy.savez_compressed`:

* ``init/N``           initial value of parameter ``N`` (torch name, e.g.
  ``model.layers.0.self_attn.q_proj.weight``);
* ``grad/{t}/N``       the gradient the optimizer consumed at step ``t``
  (0-based), recorded after ``backward()`` and before ``step()``;
* ``param/{t}/N``      the parameter after step ``t``;
* ``vshape/N``         shape (int64 array) of the official second-moment
  state: ``state[p]['vmean']`` or, for biases, ``state[p]['v']``;
* ``meta/lr``, ``meta/b1``, ``meta/b2``, ``meta/eps``, ``meta/weight_decay``,
  ``meta/steps``, ``meta/dim``, ``meta/n_heads``, ``meta/n_kv_heads``,
  ``meta/head_dim`` (0-d numeric arrays) and ``meta/torch_version``,
  ``meta/adam_mini_version`` (0-d string arrays).

All arrays stay in PyTorch layout and float32; the JAX test transposes.
Because the gradients are stored, the JAX side needs no model: it replays the
recorded gradients through its own optimizer and compares parameters.

Regenerate
----------
Needs ``torch`` (pin ``torch==2.13.0``, CPU) and ``adam-mini==1.1.1``::

    python tests/parity/make_fixture.py [--out PATH] [--steps N]

The default output is ``official_llama_gqa.npz`` next to this file.  The run is
seeded and uses deterministic algorithms on CPU, so re-running reproduces the
file (bit-for-bit on the same torch build).

Live use
--------
A test that has torch and adam-mini available can call :func:`run_official`
directly and get the same ``dict[str, np.ndarray]`` that is written to disk.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Model / data sizes.  n_heads * head_dim == dim, which Adam-mini 1.1.1 needs
# (it splits q/k into blocks of dim * dim // n_heads elements).
VOCAB = 61
DIM = 32
N_HEADS = 4
N_KV_HEADS = 2
HEAD_DIM = 8
FFN = 48
N_LAYERS = 2
BATCH = 3
SEQ = 10

# Optimizer hyper-parameters (LLaMA pre-training style, lr large enough for
# the parameters to move visibly in a few steps).
LR = 1e-2
BETAS = (0.9, 0.95)
EPS = 1e-8
WEIGHT_DECAY = 0.1
STEPS = 6

MODEL_SEED = 0
DATA_SEED = 1

DEFAULT_OUT = Path(__file__).resolve().with_name("official_llama_gqa.npz")


class RMSNorm(nn.Module):
    """LLaMA RMSNorm with a learned per-channel scale ``weight``."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` by its root-mean-square over the last axis."""
        rms = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return x * rms * self.weight


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """HuggingFace ``rotate_half``: ``[x1, x2] -> [-x2, x1]`` on the last axis."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rope(
    seq: int, head_dim: int, base: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary ``(cos, sin)`` tables of shape ``[seq, head_dim]`` (HF convention)."""
    inv_freq = 1.0 / (
        base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    )
    freqs = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


class Attention(nn.Module):
    """Causal grouped-query self-attention with rotary embeddings.

    q/k/v projections carry biases (Qwen2 style) so that the official bias
    branch is exercised; rotary embeddings make the key bias gradient nonzero
    (without them softmax would be invariant to it).
    """

    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(DIM, N_HEADS * HEAD_DIM, bias=True)
        self.k_proj = nn.Linear(DIM, N_KV_HEADS * HEAD_DIM, bias=True)
        self.v_proj = nn.Linear(DIM, N_KV_HEADS * HEAD_DIM, bias=True)
        self.o_proj = nn.Linear(N_HEADS * HEAD_DIM, DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply attention to ``x`` of shape ``[batch, seq, dim]``."""
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, N_HEADS, HEAD_DIM).transpose(1, 2)
        k = self.k_proj(x).view(b, s, N_KV_HEADS, HEAD_DIM).transpose(1, 2)
        v = self.v_proj(x).view(b, s, N_KV_HEADS, HEAD_DIM).transpose(1, 2)
        cos, sin = _rope(s, HEAD_DIM)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        # HF repeat_kv: query head j reads kv head j // (N_HEADS // N_KV_HEADS).
        rep = N_HEADS // N_KV_HEADS
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(HEAD_DIM)
        mask = torch.ones(s, s, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
        out = scores.softmax(dim=-1) @ v
        return self.o_proj(out.transpose(1, 2).reshape(b, s, N_HEADS * HEAD_DIM))


class MLP(nn.Module):
    """SwiGLU feed-forward block: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(DIM, FFN, bias=False)
        self.up_proj = nn.Linear(DIM, FFN, bias=False)
        self.down_proj = nn.Linear(FFN, DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to ``x``."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm LLaMA decoder layer."""

    def __init__(self) -> None:
        super().__init__()
        self.self_attn = Attention()
        self.mlp = MLP()
        self.input_layernorm = RMSNorm(DIM)
        self.post_attention_layernorm = RMSNorm(DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual attention then residual MLP."""
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """Embedding, decoder stack and final norm (HF ``LlamaModel``)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleList([DecoderLayer() for _ in range(N_LAYERS)])
        self.norm = RMSNorm(DIM)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Map token ids ``[batch, seq]`` to hidden states ``[batch, seq, dim]``."""
        x = self.embed_tokens(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class TinyLlama(nn.Module):
    """HF-named tiny causal LM (``LlamaForCausalLM`` layout, untied head)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Backbone()
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Return logits ``[batch, seq, vocab]``."""
        return self.lm_head(self.model(tokens))

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy on ``tokens`` of shape ``[batch, seq + 1]``."""
        logits = self(tokens[:, :-1])
        return F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


def build_model(seed: int = MODEL_SEED) -> TinyLlama:
    """Build the tiny LLaMA with seeded, non-degenerate float32 initial values.

    Matrices ~ N(0, 0.1^2) (embedding ~ N(0, 1)); biases ~ N(0, 0.02^2);
    norm scales ~ 1 + N(0, 0.05^2), so every parameter differs from its
    default and every gradient is nonzero.
    """
    gen = torch.Generator().manual_seed(seed)
    model = TinyLlama()
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.05 * noise)
            elif name.endswith("bias"):
                p.copy_(0.02 * noise)
            elif "embed_tokens" in name:
                p.copy_(noise)
            else:
                p.copy_(0.1 * noise)
    return model.float()


def make_batches(steps: int = STEPS, seed: int = DATA_SEED) -> list[torch.Tensor]:
    """Return ``steps`` seeded token batches of shape ``[BATCH, SEQ + 1]``."""
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=gen) for _ in range(steps)
    ]


def _branch(state: dict) -> str:
    """Describe which branch of ``Adam_mini.step`` handled a parameter."""
    if "v" in state:
        return "bias (per-element Adam)"
    vmean = state["vmean"]
    if vmean.dim() == 0:
        return "other (one scalar for the whole tensor)"
    if "head_per_gpu" in state:
        return f"q/k (one per head: {state['head_per_gpu']} blocks)"
    return f"per-row ({state['neuron_per_gpu']} blocks)"


def run_official(steps: int = STEPS, *, verbose: bool = False) -> dict[str, np.ndarray]:
    """Train :func:`build_model` with the official ``adam_mini.Adam_mini``.

    Args:
      steps: number of optimizer steps (one fresh batch per step).
      verbose: print the per-parameter block structure the official optimizer
        used and the loss at each step.

    Returns:
      The fixture contents: ``init/N``, ``grad/{t}/N``, ``param/{t}/N``,
      ``vshape/N`` and ``meta/*`` arrays as described in the module docstring.
    """
    import adam_mini  # local import: only needed when generating

    torch.manual_seed(MODEL_SEED)
    torch.use_deterministic_algorithms(True)
    model = build_model()
    batches = make_batches(steps)
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())

    out: dict[str, np.ndarray] = {}
    for n in names:
        out[f"init/{n}"] = params[n].detach().numpy().copy()

    opt = adam_mini.Adam_mini(
        model.named_parameters(),
        lr=LR,
        betas=BETAS,
        eps=EPS,
        weight_decay=WEIGHT_DECAY,
        dim=DIM,
        n_heads=N_HEADS,
        n_kv_heads=N_KV_HEADS,
        verbose=False,
    )

    for t, tokens in enumerate(batches):
        opt.zero_grad(set_to_none=True)
        loss = model.loss(tokens)
        loss.backward()
        for n in names:
            g = params[n].grad
            if g is None or not torch.any(g != 0):
                msg = f"parameter {n} has no/zero gradient at step {t}"
                raise RuntimeError(msg)
            out[f"grad/{t}/{n}"] = g.detach().numpy().copy()
        opt.step()
        for n in names:
            out[f"param/{t}/{n}"] = params[n].detach().numpy().copy()
        if verbose:
            print(f"step {t}: loss {loss.item():.6f}")

    for n in names:
        state = opt.state[params[n]]
        v = state["v"] if "v" in state else state["vmean"]
        out[f"vshape/{n}"] = np.asarray(v.shape, dtype=np.int64)
        if verbose:
            print(
                f"{n:50s} {tuple(params[n].shape)!s:10s} v{tuple(v.shape)!s:10s} "
                f"{_branch(state)}"
            )

    meta = {
        "lr": np.float64(LR),
        "b1": np.float64(BETAS[0]),
        "b2": np.float64(BETAS[1]),
        "eps": np.float64(EPS),
        "weight_decay": np.float64(WEIGHT_DECAY),
        "steps": np.int64(steps),
        "dim": np.int64(DIM),
        "n_heads": np.int64(N_HEADS),
        "n_kv_heads": np.int64(N_KV_HEADS),
        "head_dim": np.int64(HEAD_DIM),
        "torch_version": np.array(torch.__version__),
        "adam_mini_version": np.array(importlib.metadata.version("adam-mini")),
    }
    for k, v in meta.items():
        out[f"meta/{k}"] = np.asarray(v)
    return out


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: run the official optimizer and write the npz."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output .npz path"
    )
    parser.add_argument(
        "--steps", type=int, default=STEPS, help=f"optimizer steps (default {STEPS})"
    )
    args = parser.parse_args(argv)
    arrays = run_official(steps=args.steps, verbose=True)
    np.savez_compressed(args.out, **arrays)
    with np.load(args.out) as f:
        assert sorted(f.files) == sorted(arrays), "round-trip key mismatch"
        for k in f.files:
            np.testing.assert_array_equal(f[k], arrays[k])
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {len(arrays)} arrays)")


if __name__ == "__main__":
    main()
