"""Tests of the LLaMA-style example model (examples/llama/model.py).

References are independent of the code under test: RoPE against a float64
complex-number formula, attention against a NumPy causal softmax with
explicitly repeated key/value heads.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

# The example is not an installed package: import it from the checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from examples.llama import model as model_lib  # noqa: E402

# Small enough to run in milliseconds, big enough to have GQA (2 query heads
# per kv head) and more than one layer.
SMALL = model_lib.Config(
  vocab_size=64,
  dim=32,
  n_layers=2,
  n_heads=4,
  n_kv_heads=2,
  head_dim=8,
  hidden_dim=64,
  max_seq_len=32,
)


def _rope_reference(x: np.ndarray, position: int, theta: float) -> np.ndarray:
  """RoPE as complex rotation: pair (x_j, x_{j+D/2}) *= e^{i m theta^(-2j/D)}."""
  half = x.shape[-1] // 2
  freq = theta ** (-np.arange(half, dtype=np.float64) / half)
  z = (x[..., :half] + 1j * x[..., half:]) * np.exp(1j * position * freq)
  return np.concatenate([z.real, z.imag], axis=-1)


def _rope_1d(x: np.ndarray, position: int, theta: float = 10_000.0):
  out = model_lib.rope(
    jnp.asarray(x, jnp.float32)[None, None, None, :],
    jnp.full((1, 1), position),
    theta,
  )
  return np.asarray(out[0, 0, 0], np.float64)


def test_rope_matches_complex_rotation():
  x = np.random.default_rng(0).normal(size=16)
  for position in (0, 1, 7, 300):
    np.testing.assert_allclose(
      _rope_1d(x, position),
      _rope_reference(x, position, 10_000.0),
      rtol=1e-4,
      atol=1e-4,
    )


def test_rope_score_depends_only_on_relative_position():
  rng = np.random.default_rng(1)
  q, k = rng.normal(size=16), rng.normal(size=16)

  def score(m, n):
    return float(_rope_1d(q, m) @ _rope_1d(k, n))

  for offset in (0, 3, -5):
    scores = [score(m, m - offset) for m in (10, 25, 117)]
    np.testing.assert_allclose(scores, scores[0], rtol=1e-4, atol=1e-4)
  # ...and does depend on it: otherwise the positions would be invisible.
  by_offset = [score(50, 50 - offset) for offset in range(12)]
  assert np.ptp(by_offset) > 0.1


def test_changing_future_tokens_never_changes_earlier_logits():
  model = model_lib.Llama(SMALL, seed=0)
  rng = np.random.default_rng(2)
  tokens = rng.integers(0, SMALL.vocab_size, size=(2, 24))
  cut = 11
  changed = tokens.copy()
  changed[:, cut:] = (tokens[:, cut:] + 1 + rng.integers(0, 10, (2, 13))) % (SMALL.vocab_size)
  before = np.asarray(model(jnp.asarray(tokens)))
  after = np.asarray(model(jnp.asarray(changed)))
  np.testing.assert_allclose(before[:, :cut], after[:, :cut], atol=1e-6)
  # The change is visible from position `cut` on: the test is not vacuous.
  assert np.abs(before[:, cut:] - after[:, cut:]).max() > 1e-3


def _reference_attention(attn: model_lib.Attention, x: np.ndarray):
  """Causal multi-head attention with kv heads repeated, in float64 NumPy."""
  c = attn.config
  group = c.n_heads // c.n_kv_heads
  batch, seq, _ = x.shape

  def project(linear, heads):
    w = np.asarray(linear.kernel[...], np.float64)
    return (x @ w).reshape(batch, seq, heads, c.head_dim)

  q = project(attn.q_proj, c.n_heads)
  k = project(attn.k_proj, c.n_kv_heads)
  v = project(attn.v_proj, c.n_kv_heads)
  for t in range(seq):
    q[:, t] = _rope_reference(q[:, t], t, c.rope_theta)
    k[:, t] = _rope_reference(k[:, t], t, c.rope_theta)
  # Query head h reads kv head h // group (Hugging Face's repeat_kv).
  k = np.repeat(k, group, axis=2)
  v = np.repeat(v, group, axis=2)
  scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(c.head_dim)
  future = np.triu(np.ones((seq, seq), bool), k=1)
  scores = np.where(future, -np.inf, scores)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, seq, -1)
  return out @ np.asarray(attn.o_proj.kernel[...], np.float64)


def test_grouped_query_attention_shapes_and_values():
  model = model_lib.Llama(SMALL, seed=3)
  attn = model.layers[0].self_attn
  c = SMALL
  assert attn.q_proj.kernel[...].shape == (c.dim, c.n_heads * c.head_dim)
  assert attn.k_proj.kernel[...].shape == (c.dim, c.n_kv_heads * c.head_dim)
  assert attn.v_proj.kernel[...].shape == (c.dim, c.n_kv_heads * c.head_dim)
  assert attn.o_proj.kernel[...].shape == (c.n_heads * c.head_dim, c.dim)
  # Larger weights than the 0.02 init so the softmax is far from uniform and
  # a wrong head grouping shows.
  for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
    proj.kernel[...] = proj.kernel[...] * 20
  x = np.random.default_rng(4).normal(size=(2, 9, c.dim))
  positions = jnp.broadcast_to(jnp.arange(9), (2, 9))
  out = attn(jnp.asarray(x, jnp.float32), positions)
  assert out.shape == (2, 9, c.dim)
  np.testing.assert_allclose(np.asarray(out), _reference_attention(attn, x), rtol=2e-3, atol=2e-4)


def test_logits_shape_and_dtype():
  model = model_lib.Llama(SMALL, seed=0)
  logits = model(jnp.zeros((3, 5), jnp.int32))
  assert logits.shape == (3, 5, SMALL.vocab_size)
  assert logits.dtype == jnp.float32


def test_parameter_paths_are_hugging_face_names():
  params = nnx.to_pure_dict(nnx.state(model_lib.Llama(SMALL, seed=0)))
  paths = {
    jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  layer = "['layers'][1]"
  expected = {
    "['embed_tokens']['embedding']",
    "['norm']['scale']",
    "['lm_head']['kernel']",
    f"{layer}['input_layernorm']['scale']",
    f"{layer}['post_attention_layernorm']['scale']",
    *(f"{layer}['self_attn']['{p}_proj']['kernel']" for p in "qkvo"),
    *(f"{layer}['mlp']['{p}_proj']['kernel']" for p in ("gate", "up", "down")),
  }
  assert expected <= paths
  assert len(paths) == 3 + 9 * SMALL.n_layers  # nothing else, no biases


def test_tied_embeddings_have_no_lm_head():
  import dataclasses

  tied = model_lib.Llama(dataclasses.replace(SMALL, tie_embeddings=True), seed=0)
  untied = model_lib.Llama(SMALL, seed=0)
  assert tied.lm_head is None
  assert model_lib.param_count(untied) - model_lib.param_count(tied) == SMALL.dim * SMALL.vocab_size
  assert tied(jnp.zeros((1, 4), jnp.int32)).shape == (1, 4, SMALL.vocab_size)


def test_init_is_a_function_of_the_seed():
  def leaves(seed):
    return jax.tree.leaves(nnx.state(model_lib.Llama(SMALL, seed=seed)))

  for a, b in zip(leaves(5), leaves(5)):
    np.testing.assert_array_equal(a, b)
  kernels_5 = [x for x in leaves(5) if x.ndim == 2]
  kernels_6 = [x for x in leaves(6) if x.ndim == 2]
  assert all(not np.array_equal(a, b) for a, b in zip(kernels_5, kernels_6))


@pytest.mark.parametrize("name", sorted(model_lib.PRESETS))
def test_presets_build_and_count(name):
  config = model_lib.PRESETS[name]
  model = nnx.eval_shape(lambda: model_lib.Llama(config, seed=0))
  attn = config.dim * config.head_dim * 2 * (config.n_heads + config.n_kv_heads)
  per_layer = attn + 3 * config.dim * config.hidden_dim + 2 * config.dim
  expected = 2 * config.vocab_size * config.dim + config.dim + config.n_layers * per_layer
  assert model_lib.param_count(model) == expected


def test_config_rejects_heads_that_do_not_group():
  with pytest.raises(ValueError, match="multiple of n_kv_heads"):
    model_lib.Config(n_heads=6, n_kv_heads=4)
