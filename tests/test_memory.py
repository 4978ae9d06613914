"""Optimizer-state memory on LLaMA shapes, exactly, from shapes only."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest

import optax_mini

S = jax.ShapeDtypeStruct


def llama_shapes(dim, layers, heads, kv_heads, ffn, vocab, dtype=jnp.float32):
  """HF/NNX-named Llama parameter shapes in Flax layout (no arrays allocated)."""
  head_dim = dim // heads
  layer = lambda: {  # noqa: E731
      "self_attn": {
          "q_proj": {"kernel": S((dim, heads * head_dim), dtype)},
          "k_proj": {"kernel": S((dim, kv_heads * head_dim), dtype)},
          "v_proj": {"kernel": S((dim, kv_heads * head_dim), dtype)},
          "o_proj": {"kernel": S((heads * head_dim, dim), dtype)},
      },
      "mlp": {
          "gate_proj": {"kernel": S((dim, ffn), dtype)},
          "up_proj": {"kernel": S((dim, ffn), dtype)},
          "down_proj": {"kernel": S((ffn, dim), dtype)},
      },
      "input_layernorm": {"scale": S((dim,), dtype)},
      "post_attention_layernorm": {"scale": S((dim,), dtype)},
  }
  return {
      "model": {
          "embed_tokens": {"embedding": S((vocab, dim), dtype)},
          "layers": {i: layer() for i in range(layers)},
          "norm": {"scale": S((dim,), dtype)},
      },
      "lm_head": {"kernel": S((dim, vocab), dtype)},
  }, head_dim


def reference_v_entries(dim, layers, heads, kv_heads, ffn, vocab):
  """REFERENCE.md's partition, counted by hand: per head for q/k, per output
  neuron for v/o/MLP, per token for embed and lm_head, one per norm."""
  kv_dim = kv_heads * dim // heads
  per_layer = heads + kv_heads + kv_dim + dim + ffn + ffn + dim + 1 + 1
  return layers * per_layer + vocab + vocab + 1


def nbytes(tree):
  return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


LLAMA2_7B = dict(dim=4096, layers=32, heads=32, kv_heads=32, ffn=11008, vocab=32000)
LLAMA_GQA = dict(dim=1024, layers=4, heads=16, kv_heads=4, ffn=2816, vocab=32000)


@pytest.mark.parametrize("config", [LLAMA2_7B, LLAMA_GQA], ids=["llama2-7b", "gqa"])
def test_state_is_half_of_adamw(config):
  params, head_dim = llama_shapes(**config)
  adamw = nbytes(jax.eval_shape(optax.adamw(1e-3).init, params))
  mini = nbytes(jax.eval_shape(optax_mini.adam_mini(1e-3, head_dim=head_dim).init, params))
  mini_bf16 = nbytes(jax.eval_shape(optax_mini.adam_mini(1e-3, head_dim=head_dim, mu_dtype=jnp.bfloat16).init, params))
  assert mini <= 0.502 * adamw
  assert mini_bf16 <= 0.252 * adamw
  state = jax.eval_shape(optax_mini.adam_mini(1e-3, head_dim=head_dim).init, params)
  num_v = sum(x.size for x in jax.tree.leaves(state[0].nu))
  assert num_v == reference_v_entries(**config)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state[0].nu))
  report = optax_mini.explain(params, head_dim=head_dim)
  assert report.num_v == num_v and report.adam_mini_bytes == mini and report.adamw_bytes == adamw


def test_llama2_7b_matches_the_paper():
  params, head_dim = llama_shapes(**LLAMA2_7B)
  report = optax_mini.explain(params, head_dim=head_dim, mu_dtype=jnp.bfloat16)
  assert report.num_params == 6_738_415_616  # Llama-2-7B
  assert report.num_v == 1_163_841  # "about 1.16 M block values"
  assert abs(report.adamw_bytes / 1e9 - 53.9) < 0.05  # paper: 53.92 GB
  assert abs(report.adam_mini_bytes / 1e9 - 26.96) < 0.01  # paper: 26.96 GB
  assert abs(report.adam_mini_mu_dtype_bytes / 1e9 - 13.48) < 0.01
