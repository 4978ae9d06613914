"""LLaMA parameter trees at the Adam-mini paper's sizes, as shapes only.

The configurations are the official repository's torchtitan ``llama2_configs``
(zyushun/Adam-mini, ``examples/llama/torchtitan/models/llama/__init__.py``),
which the paper's scaling-law runs (39M .. 1B, C4, Llama-2 tokenizer) and its
Llama-2-7B pre-training use: vocabulary 32000, SwiGLU MLP of width
``8/3 * dim`` rounded up to a multiple of 256, untied embeddings.

Trees use Hugging Face names in Flax layouts, as ``examples/llama/model.py``
produces them through ``nnx.to_pure_dict`` (kernels ``[in, out]``, flat
``[dim, heads * head_dim]`` q/k kernels, integer layer keys), so the default
Adam-mini rules apply with ``head_dim=config.head_dim``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LlamaShape:
  """Shapes of one Llama-2-style decoder."""

  name: str
  dim: int
  n_layers: int
  n_heads: int
  n_kv_heads: int | None = None
  vocab_size: int = 32000
  hidden_dim: int | None = None

  @property
  def head_dim(self) -> int:
    return self.dim // self.n_heads

  @property
  def kv_heads(self) -> int:
    return self.n_kv_heads or self.n_heads

  @property
  def ffn_dim(self) -> int:
    if self.hidden_dim is not None:
      return self.hidden_dim
    # Llama's FeedForward: int(2 * 4 * dim / 3) rounded up to multiple_of=256.
    hidden = int(2 * 4 * self.dim / 3)
    return 256 * math.ceil(hidden / 256)

  @property
  def num_params(self) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(param_shapes(self)))


# The paper's ladder (official torchtitan llama2_configs); 7B is Llama-2-7B.
PAPER: tuple[LlamaShape, ...] = (
    LlamaShape("39M", dim=384, n_layers=8, n_heads=6),
    LlamaShape("67M", dim=512, n_layers=10, n_heads=8),
    LlamaShape("102M", dim=640, n_layers=12, n_heads=10),
    LlamaShape("162M", dim=768, n_layers=16, n_heads=12),
    LlamaShape("271M", dim=1024, n_layers=16, n_heads=16),
    LlamaShape("1B", dim=2048, n_layers=18, n_heads=16),
    LlamaShape("Llama-2-7B", dim=4096, n_layers=32, n_heads=32),
)
LLAMA2_7B = PAPER[-1]

# Update-speed trees (LLaMA-shaped, HF names): ~10M, ~35M, ~100M parameters.
SPEED: tuple[LlamaShape, ...] = (
    LlamaShape("11M", dim=256, n_layers=8, n_heads=4, vocab_size=8000),
    LlamaShape("35M", dim=384, n_layers=6, n_heads=6),
    LlamaShape("102M", dim=640, n_layers=12, n_heads=10),
)


def scaled(dim: int) -> LlamaShape:
  """Llama-2's large-model scaling: head_dim 128, ``n_layers = dim / 128``.

  Exact for Llama-2-7B (4096, 32 layers) and 13B (5120, 40 layers); used to
  find the largest model that fits a memory budget in steps of 128 in width.
  """
  return LlamaShape(f"d{dim}", dim=dim, n_layers=dim // 128, n_heads=dim // 128)


def param_shapes(config: LlamaShape, dtype: Any = jnp.float32) -> dict[str, Any]:
  """The parameter tree of ``config`` as ``jax.ShapeDtypeStruct`` leaves."""
  c = config
  s = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)  # noqa: E731
  layer = lambda: {  # noqa: E731
      "self_attn": {
          "q_proj": {"kernel": s(c.dim, c.n_heads * c.head_dim)},
          "k_proj": {"kernel": s(c.dim, c.kv_heads * c.head_dim)},
          "v_proj": {"kernel": s(c.dim, c.kv_heads * c.head_dim)},
          "o_proj": {"kernel": s(c.n_heads * c.head_dim, c.dim)},
      },
      "mlp": {
          "gate_proj": {"kernel": s(c.dim, c.ffn_dim)},
          "up_proj": {"kernel": s(c.dim, c.ffn_dim)},
          "down_proj": {"kernel": s(c.ffn_dim, c.dim)},
      },
      "input_layernorm": {"scale": s(c.dim)},
      "post_attention_layernorm": {"scale": s(c.dim)},
  }
  return {
      "embed_tokens": {"embedding": s(c.vocab_size, c.dim)},
      "layers": {i: layer() for i in range(c.n_layers)},
      "norm": {"scale": s(c.dim)},
      "lm_head": {"kernel": s(c.dim, c.vocab_size)},
  }


def materialize(shapes: Any, seed: int = 0, scale: float = 0.02) -> Any:
  """Random arrays with the shapes and dtypes of ``shapes``."""
  leaves, treedef = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return treedef.unflatten([
      (scale * jax.random.normal(k, x.shape, jnp.float32)).astype(x.dtype)
      for k, x in zip(keys, leaves)
  ])


@dataclasses.dataclass(frozen=True)
class TorchMoeShape:
  """A Qwen3-MoE checkpoint as ``safetensors.flax.load_file`` gives it: a
  flat dict keyed by PyTorch's dotted names, one ``nn.Linear`` ``[out, in]``
  per expert and projection (HF's checkpoint layout), so a leaf count in the
  tens of thousands. The defaults are Qwen3-30B-A3B's config (48 layers of
  128 experts: 18,867 leaves, 30.5B parameters)."""

  name: str = "Qwen3-30B-A3B"
  dim: int = 2048
  n_layers: int = 48
  n_experts: int = 128
  n_heads: int = 32
  n_kv_heads: int = 4
  head_dim: int = 128
  moe_dim: int = 768
  vocab_size: int = 151936


def torch_moe_shapes(c: TorchMoeShape, dtype: Any = jnp.float32) -> dict[str, Any]:
  """The parameter dict of ``c`` as ``jax.ShapeDtypeStruct`` leaves."""
  s = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)  # noqa: E731
  tree = {"model.embed_tokens.weight": s(c.vocab_size, c.dim), "model.norm.weight": s(c.dim),
          "lm_head.weight": s(c.vocab_size, c.dim)}
  for layer in range(c.n_layers):
    p = f"model.layers.{layer}."
    tree |= {
        p + "input_layernorm.weight": s(c.dim),
        p + "post_attention_layernorm.weight": s(c.dim),
        p + "self_attn.q_proj.weight": s(c.n_heads * c.head_dim, c.dim),
        p + "self_attn.k_proj.weight": s(c.n_kv_heads * c.head_dim, c.dim),
        p + "self_attn.v_proj.weight": s(c.n_kv_heads * c.head_dim, c.dim),
        p + "self_attn.o_proj.weight": s(c.dim, c.n_heads * c.head_dim),
        p + "self_attn.q_norm.weight": s(c.head_dim),
        p + "self_attn.k_norm.weight": s(c.head_dim),
        p + "mlp.gate.weight": s(c.n_experts, c.dim),
    }
    for e in range(c.n_experts):
      q = f"{p}mlp.experts.{e}."
      tree |= {q + "gate_proj.weight": s(c.moe_dim, c.dim), q + "up_proj.weight": s(c.moe_dim, c.dim),
               q + "down_proj.weight": s(c.dim, c.moe_dim)}
  return tree
