"""A LLaMA-style decoder in Flax NNX, named so that Adam-mini needs no rules.

The module tree mirrors Hugging Face's ``LlamaForCausalLM`` (``embed_tokens``,
``layers[i].self_attn.q_proj``, ``mlp.gate_proj``, ``input_layernorm``,
``norm``, ``lm_head``). The default Adam-mini rules match those path
components, so ``optax_mini.adam_mini(lr, head_dim=config.head_dim)`` needs
nothing else. The layers are an ``nnx.List``, not a scanned stack, so every
parameter path names its layer index and no tensor carries a layer axis.

Example:
  >>> import jax.numpy as jnp
  >>> from examples.llama.model import PRESETS, Llama
  >>> model = Llama(PRESETS["tiny"], seed=0)
  >>> model(jnp.zeros((2, 16), jnp.int32)).shape
  (2, 16, 256)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

# LLaMA draws every matrix from N(0, 0.02^2); so do the paper's runs.
_INIT = nnx.initializers.normal(stddev=0.02)


@dataclasses.dataclass(frozen=True)
class Config:
  """Shapes of a LLaMA-style decoder.

  Attributes:
    vocab_size: number of token ids; 256 for the bytes of ``data.py``.
    dim: width of the residual stream.
    n_layers: number of decoder blocks.
    n_heads: query heads.
    n_kv_heads: key/value heads (grouped-query attention); divides
      ``n_heads``.
    head_dim: width of one head. ``n_heads * head_dim`` need not equal
      ``dim`` (Qwen3 and Gemma differ), which is why Adam-mini is told
      ``head_dim`` rather than ``n_heads``.
    hidden_dim: inner width of the SwiGLU MLP.
    max_seq_len: longest sequence the preset is meant for (RoPE itself has
      no limit); ``train.py`` uses it as the default ``--seq-len`` cap.
    rope_theta: RoPE base frequency.
    norm_eps: RMSNorm epsilon.
    tie_embeddings: reuse the embedding table as the output projection
      instead of a separate ``lm_head``.
    compute_dtype: dtype of activations and matmuls (parameters stay
      float32); ``"bfloat16"`` on accelerators.
  """

  vocab_size: int = 256
  dim: int = 128
  n_layers: int = 2
  n_heads: int = 4
  n_kv_heads: int = 2
  head_dim: int = 32
  hidden_dim: int = 384
  max_seq_len: int = 128
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-5
  tie_embeddings: bool = False
  compute_dtype: str = "float32"

  def __post_init__(self) -> None:
    if self.n_heads % self.n_kv_heads:
      raise ValueError(
        f"n_heads={self.n_heads} must be a multiple of "
        f"n_kv_heads={self.n_kv_heads}: grouped-query attention shares "
        "each key/value head among n_heads // n_kv_heads query heads."
      )
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even: RoPE rotates pairs.")


# The paper's 39M and 102M models (Zhang et al. 2024, Llama-2 shapes on C4)
# use a 32k-token vocabulary. Here tokens are bytes, so vocab_size is 256 and
# each of embed_tokens / lm_head holds (32000 - 256) * dim fewer parameters
# than the paper's: 14.4M (39m) and 61.3M (102m) in total, untied.
# hidden_dim follows LLaMA: 8/3 * dim, rounded up to a multiple of 256.
PRESETS: dict[str, Config] = {
  # 100 steps in tens of seconds on 2 CPU cores at batch 16, seq 128.
  "tiny": Config(
    dim=128,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    head_dim=32,
    hidden_dim=384,
    max_seq_len=128,
  ),
  "small": Config(
    dim=256,
    n_layers=4,
    n_heads=8,
    n_kv_heads=4,
    head_dim=32,
    hidden_dim=768,
    max_seq_len=256,
  ),
  # The Adam-mini repository's Llama-2-style configs for the paper's C4
  # runs (its torchtitan llama2_configs): 39M is dim 384, 8 layers, 6 heads;
  # 102M is dim 640, 12 layers, 10 heads; FFN 8/3 * dim rounded up to 256.
  "paper_39m": Config(
    dim=384,
    n_layers=8,
    n_heads=6,
    n_kv_heads=6,
    head_dim=64,
    hidden_dim=1024,
    max_seq_len=512,
  ),
  "paper_102m": Config(
    dim=640,
    n_layers=12,
    n_heads=10,
    n_kv_heads=10,
    head_dim=64,
    hidden_dim=1792,
    max_seq_len=512,
  ),
}


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotates feature pairs of ``x`` by position-proportional angles (RoPE).

  Pairs feature ``i`` with ``i + head_dim / 2`` (Hugging Face's "rotate
  half"), so q/k kernels converted from ``transformers`` need no permutation.

  Args:
    x: ``[batch, seq, heads, head_dim]``.
    positions: ``[batch, seq]`` integer positions.
    theta: base frequency.

  Returns:
    ``x`` rotated, same shape and dtype. ``<rope(q, m), rope(k, n)>``
    depends on ``m - n`` only.
  """
  half = x.shape[-1] // 2
  inv_freq = 1.0 / (theta ** (jnp.arange(half, dtype=jnp.float32) / half))
  angles = positions[..., None].astype(jnp.float32) * inv_freq
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x1 = x[..., :half].astype(jnp.float32)
  x2 = x[..., half:].astype(jnp.float32)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
  return rotated.astype(x.dtype)


# Sharding annotations, as Flax's sharding guide writes them: logical mesh
# axes per kernel axis. Megatron-style tensor parallelism: q/k/v, gate/up and
# lm_head split their output features (heads) over "tp" ("column parallel"),
# o_proj/down_proj their input features ("row parallel"); the other axis is
# split over "fsdp". Norm scales are replicated. They are metadata
# (nnx.get_partition_spec) unless a mesh is set when the model is built, in
# which case Flax places each parameter accordingly (eager sharding).
COLUMN_PARALLEL = ("fsdp", "tp")
ROW_PARALLEL = ("tp", "fsdp")


def _linear(
  in_features: int,
  out_features: int,
  config: Config,
  rngs: nnx.Rngs,
  sharding: tuple[str, str] = COLUMN_PARALLEL,
) -> nnx.Linear:
  return nnx.Linear(
    in_features,
    out_features,
    use_bias=False,
    kernel_init=nnx.with_partitioning(_INIT, sharding),
    dtype=config.compute_dtype,
    rngs=rngs,
  )


def _rms_norm(config: Config, rngs: nnx.Rngs) -> nnx.RMSNorm:
  # float32 whatever the compute dtype: a bf16 mean of squares loses bits.
  return nnx.RMSNorm(config.dim, epsilon=config.norm_eps, dtype=jnp.float32, rngs=rngs)


class Attention(nnx.Module):
  """Causal grouped-query self-attention with RoPE.

  Kernels are flat ``[in, heads * head_dim]`` (``o_proj``: the transpose),
  without biases, as in LLaMA.
  """

  def __init__(self, config: Config, rngs: nnx.Rngs):
    c = config
    self.config = c
    self.q_proj = _linear(c.dim, c.n_heads * c.head_dim, c, rngs)
    self.k_proj = _linear(c.dim, c.n_kv_heads * c.head_dim, c, rngs)
    self.v_proj = _linear(c.dim, c.n_kv_heads * c.head_dim, c, rngs)
    self.o_proj = _linear(c.n_heads * c.head_dim, c.dim, c, rngs, ROW_PARALLEL)

  def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
    """``[batch, seq, dim]`` -> same; position t sees positions <= t only."""
    c = self.config
    batch, seq, _ = x.shape
    q = self.q_proj(x).reshape(batch, seq, c.n_heads, c.head_dim)
    k = self.k_proj(x).reshape(batch, seq, c.n_kv_heads, c.head_dim)
    v = self.v_proj(x).reshape(batch, seq, c.n_kv_heads, c.head_dim)
    q = rope(q, positions, c.rope_theta)
    k = rope(k, positions, c.rope_theta)
    # Shares each kv head among n_heads // n_kv_heads query heads (GQA).
    out = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return self.o_proj(out.reshape(batch, seq, c.n_heads * c.head_dim))


class MLP(nnx.Module):
  """SwiGLU feed-forward block: ``down(silu(gate(x)) * up(x))``."""

  def __init__(self, config: Config, rngs: nnx.Rngs):
    self.gate_proj = _linear(config.dim, config.hidden_dim, config, rngs)
    self.up_proj = _linear(config.dim, config.hidden_dim, config, rngs)
    self.down_proj = _linear(config.hidden_dim, config.dim, config, rngs, ROW_PARALLEL)

  def __call__(self, x: jax.Array) -> jax.Array:
    """``[..., dim]`` -> ``[..., dim]``."""
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
  """Pre-norm block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

  def __init__(self, config: Config, rngs: nnx.Rngs):
    self.self_attn = Attention(config, rngs)
    self.mlp = MLP(config, rngs)
    self.input_layernorm = _rms_norm(config, rngs)
    self.post_attention_layernorm = _rms_norm(config, rngs)

  def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
    """``[batch, seq, dim]`` -> ``[batch, seq, dim]``."""
    dtype = x.dtype
    h = self.input_layernorm(x).astype(dtype)
    x = x + self.self_attn(h, positions)
    h = self.post_attention_layernorm(x).astype(dtype)
    return x + self.mlp(h)


class Llama(nnx.Module):
  """LLaMA-style causal language model returning float32 logits.

  Args:
    config: the shapes (see ``PRESETS``).
    seed: every parameter is drawn from ``nnx.Rngs(seed)``, so equal seeds
      give bit-equal models.
  """

  def __init__(self, config: Config, *, seed: int = 0):
    self.config = config
    rngs = nnx.Rngs(seed)
    # The annotations are placed eagerly only under a mesh (jax.set_mesh);
    # without one the model builds on one device, annotations as metadata.
    with nnx.use_eager_sharding(not jax.sharding.get_abstract_mesh().empty):
      self.embed_tokens = nnx.Embed(
        config.vocab_size,
        config.dim,
        embedding_init=nnx.with_partitioning(_INIT, COLUMN_PARALLEL),
        dtype=config.compute_dtype,
        rngs=rngs,
      )
      # nnx.List (not a Python list) registers the blocks as sub-modules, with
      # parameter paths ('layers', 0, 'self_attn', ...).
      self.layers = nnx.List([DecoderLayer(config, rngs) for _ in range(config.n_layers)])
      self.norm = _rms_norm(config, rngs)
      self.lm_head = (
        None if config.tie_embeddings else _linear(config.dim, config.vocab_size, config, rngs)
      )

  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None) -> jax.Array:
    """Next-token logits ``[batch, seq, vocab_size]`` for int ``tokens``.

    Args:
      tokens: ``[batch, seq]`` token ids.
      positions: ``[batch, seq]`` RoPE positions; ``0 .. seq-1`` if omitted.
    """
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    x = self.embed_tokens(tokens)
    for layer in self.layers:
      x = layer(x, positions)
    x = self.norm(x).astype(x.dtype)
    if self.lm_head is None:
      logits = self.embed_tokens.attend(x)
    else:
      logits = self.lm_head(x)
    # The two optimizers are compared on small loss differences: keep the
    # cross-entropy out of bfloat16.
    return logits.astype(jnp.float32)


def param_count(model: nnx.Module) -> int:
  """Number of scalar parameters (``nnx.Param`` leaves) in ``model``."""
  params = nnx.state(model, nnx.Param)
  return sum(int(x.size) for x in jax.tree.leaves(params))
