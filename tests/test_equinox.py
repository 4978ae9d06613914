"""Equinox models: PyTorch-layout weights, trained end to end.

The model is ``tests/third_party/record_equinox.py``'s Llama, built from
Equinox's own layers (``eqx.nn.Linear`` weight ``[out, in]``), at a toy size.
The blocks each leaf gets are compared with counts from the model's sizes,
and a few steps of ``eqx.filter_jit`` training must lower the loss, with
float32 and int8 ``m``.
"""

from __future__ import annotations

import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

import optax_mini

eqx = pytest.importorskip(
    "equinox", reason="equinox is not installed (pip install equinox==0.13.8; in the test extra)"
)

HERE = pathlib.Path(__file__).parent / "third_party"
SIZES = dict(vocab_size=64, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128)


def _model():
  sys.path.insert(0, str(HERE))
  try:
    import record_equinox
  finally:
    sys.path.remove(str(HERE))
  return record_equinox.make_model("equinox_llama_1b", **SIZES)


def _tx(**kwargs):
  return optax_mini.adam_mini(3e-3, head_dim=SIZES["head_dim"],
                              blocks=optax_mini.BlockRules(weight_layout="torch"), **kwargs)


def test_blocks_follow_the_models_sizes():
  params = eqx.filter(_model(), eqx.is_inexact_array)
  nu = _tx().init(params)[0].nu  # adam_mini: chain(scale_by_adam_mini, ...)
  c = SIZES
  layer = nu.layers[0]
  assert layer.self_attn.q_proj.weight.shape == (c["num_heads"],)
  assert layer.self_attn.k_proj.weight.shape == (c["num_kv_heads"],)
  assert layer.self_attn.v_proj.weight.shape == (c["num_kv_heads"] * c["head_dim"],)
  assert layer.self_attn.o_proj.weight.shape == (c["d_model"],)
  assert layer.mlp.gate_proj.weight.shape == layer.mlp.up_proj.weight.shape == (c["mlp_dim"],)
  assert layer.mlp.down_proj.weight.shape == (c["d_model"],)
  assert layer.input_layernorm.weight.shape == ()
  assert nu.embed_tokens.weight.shape == (c["vocab_size"],)
  # Undeclared, the square q_proj/o_proj weights fit both readings: an error.
  with pytest.raises(ValueError, match=r"\.layers\[0\]\.self_attn\.q_proj\.weight.*weight_layout='torch'"):
    optax_mini.adam_mini(3e-3, head_dim=SIZES["head_dim"]).init(params)


@pytest.mark.parametrize("mu_dtype", [None, jnp.int8], ids=["float32", "int8"])
def test_training_an_equinox_model_lowers_its_loss(mu_dtype):
  model = _model()
  tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 17), 0, SIZES["vocab_size"])
  tx = _tx(mu_dtype=mu_dtype)
  state = tx.init(eqx.filter(model, eqx.is_inexact_array))

  def loss_fn(model):
    logits = jax.vmap(model)(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  @eqx.filter_jit
  def step(model, state):
    loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
    updates, state = tx.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
    return eqx.apply_updates(model, updates), state, loss

  losses = []
  for _ in range(30):
    model, state, loss = step(model, state)
    losses.append(float(loss))
  assert all(jnp.isfinite(jnp.asarray(losses)))
  # A fixed batch of random tokens, memorised: the loss (60 at the start,
  # Equinox's N(0, 1) tied embedding making large logits) ends below half of
  # uniform guessing's log(64) = 4.2.
  assert losses[-1] < 0.5 * math.log(SIZES["vocab_size"]), losses
  if mu_dtype is not None:
    mu = state[0].mu
    assert isinstance(mu.layers[0].mlp.gate_proj.weight, optax_mini.quantize.QuantizedMoment)
