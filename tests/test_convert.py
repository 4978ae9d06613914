"""convert_state: a state's first moment re-stored in another mu_dtype/mu_code.

References are independent of the code under test: float64 NumPy
quantization and dequantization (tests/test_int8.py's), float32 ``m`` itself,
and a float32-m run continued without conversion.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optax_mini
from optax_mini import quantize
from tests.test_int8 import (
    REFERENCE_CODES,
    WORST_ERROR,
    reference_dequantize,
    reference_quantize,
)

SHAPES = {
    "embed_tokens": {"embedding": (64, 96)},  # quantized, block 96
    "self_attn": {"q_proj": {"kernel": (96, 64)}},  # quantized, block 64
    "mlp": {"kernel": (24, 600)},  # quantized, blocks of 200
    "small": {"kernel": (16, 8)},  # float32 m
    "norm": {"scale": (96,)},
}
QUANTIZED = (("embed_tokens", "embedding"), ("self_attn", "q_proj", "kernel"), ("mlp", "kernel"))


def tree(seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.standard_t(3, size=s) * scale, jnp.float32), SHAPES,
                      is_leaf=lambda x: isinstance(x, tuple))


def at(tree, path):
  return functools.reduce(lambda t, k: t[k], path, tree)


def run(tx, params, state, steps, first=1):
  update = jax.jit(tx.update)
  for t in range(first, first + steps):
    updates, state = update(tree(t, 1e-2), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


@pytest.mark.parametrize("code", ["power", "dynamic"])
def test_float32_to_int8_is_the_float64_quantization_of_m(code):
  params = tree(0)
  float_tx = optax_mini.adam_mini(1e-2, head_dim=16)
  _, state = run(float_tx, params, float_tx.init(params), 4)
  int8_tx = optax_mini.adam_mini(1e-2, head_dim=16, mu_dtype=jnp.int8, mu_code=code)
  converted = optax_mini.convert_state(state, int8_tx, params)
  assert jax.tree.structure(converted) == jax.tree.structure(int8_tx.init(params))
  for path in QUANTIZED:
    m = np.asarray(at(state[0].mu, path))
    q = at(converted[0].mu, path)
    assert isinstance(q, quantize.QuantizedMoment) and q.code == code
    want, scales, tie = reference_quantize(m, REFERENCE_CODES[code])
    np.testing.assert_array_equal(np.asarray(q.scales), scales.astype(np.float32), err_msg=str(path))
    got = np.asarray(q.codes)
    assert np.all((got == want) | tie), path
  # Leaves kept in float32, v and the count: as they were.
  np.testing.assert_array_equal(np.asarray(converted[0].mu["small"]["kernel"]),
                                np.asarray(state[0].mu["small"]["kernel"]))
  for a, b in zip(jax.tree.leaves(converted[0].nu), jax.tree.leaves(state[0].nu), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(converted[0].count) == int(state[0].count) == 4


@pytest.mark.parametrize("code", ["power", "dynamic"])
def test_int8_to_float32_is_the_float64_dequantization(code):
  params = tree(0)
  int8_tx = optax_mini.adam_mini(1e-2, head_dim=16, mu_dtype=jnp.int8, mu_code=code)
  _, state = run(int8_tx, params, int8_tx.init(params), 4)
  float_tx = optax_mini.adam_mini(1e-2, head_dim=16)
  converted = optax_mini.convert_state(state, float_tx, params)
  for path in QUANTIZED:
    q = at(state[0].mu, path)
    got = at(converted[0].mu, path)
    assert got.dtype == jnp.float32 and got.shape == q.codes.shape
    want = reference_dequantize(np.asarray(q.codes), np.asarray(q.scales, np.float64), REFERENCE_CODES[code])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=0, err_msg=str(path))
  # Back to int8: each stored value is a map value, so the power map gives
  # the same codes, and the scales to float32 rounding (127**4 is not a
  # float32). The dynamic map has no -1: a block whose largest magnitude is
  # negative comes back with a scale 0.7 % smaller, the same values to the
  # map's rounding.
  again = optax_mini.convert_state(converted, int8_tx, params)
  for path in QUANTIZED:
    a, b = at(again[0].mu, path), at(state[0].mu, path)
    if code == "power":
      np.testing.assert_array_equal(np.asarray(a.codes), np.asarray(b.codes), err_msg=str(path))
      np.testing.assert_allclose(np.asarray(a.scales), np.asarray(b.scales), rtol=2e-7, err_msg=str(path))
    values = reference_dequantize(np.asarray(a.codes), np.asarray(a.scales, np.float64), REFERENCE_CODES[code])
    before = reference_dequantize(np.asarray(b.codes), np.asarray(b.scales, np.float64), REFERENCE_CODES[code])
    bound = WORST_ERROR[code] * np.repeat(np.asarray(b.scales, np.float64), quantize.block_size(b.codes.shape[-1]), -1)
    assert np.all(np.abs(values - before) <= bound + 1e-12), path


def test_a_float32_run_continues_with_int8_mu():
  """Switching to int8 m midway ends where the float32 run does, to the
  quantization's error; a state never converted would be refused."""
  params = tree(0)
  float_tx = optax_mini.adam_mini(1e-2, head_dim=16)
  int8_tx = optax_mini.adam_mini(1e-2, head_dim=16, mu_dtype=jnp.int8)
  params, state = run(float_tx, params, float_tx.init(params), 5)
  with pytest.raises(ValueError, match=r"convert_state"):
    int8_tx.update(tree(6, 1e-2), state, params)
  want, _ = run(float_tx, params, state, 5, first=6)
  got, int8_state = run(int8_tx, params, optax_mini.convert_state(state, int8_tx, params), 5, first=6)
  assert int(int8_state[0].count) == 10
  for (path, a), b, p in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want),
                             jax.tree.leaves(params), strict=True):
    moved = np.asarray(b) - np.asarray(p)
    error = np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(moved)
    assert error < 0.05, (jax.tree_util.keystr(path), error)


def test_wrapped_states_convert():
  params = tree(0)
  wrap = lambda mu: optax.MultiSteps(  # noqa: E731
      optax.inject_hyperparams(optax_mini.adam_mini, static_args=("head_dim", "mu_dtype"))(
          learning_rate=1e-2, head_dim=16, mu_dtype=mu), every_k_schedule=2)
  float_tx, int8_tx = wrap(None), wrap(jnp.int8)
  _, state = run(float_tx, params, float_tx.init(params), 3)
  converted = optax_mini.convert_state(state, int8_tx, params)
  assert jax.tree.structure(converted) == jax.tree.structure(int8_tx.init(params))
  _, converted = run(int8_tx, params, converted, 2, first=4)
  leaves = jax.tree.leaves(converted)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves if jnp.issubdtype(x.dtype, jnp.floating))


def test_another_partition_or_transform_is_refused():
  params = tree(0)
  state = optax_mini.adam_mini(1e-2, head_dim=16).init(params)
  with pytest.raises(ValueError, match=r"\['self_attn'\]\['q_proj'\]\['kernel'\].*v has shape \(4,\).*\(2,\)"):
    optax_mini.convert_state(state, optax_mini.adam_mini(1e-2, head_dim=32, mu_dtype=jnp.int8), params)
  with pytest.raises(ValueError, match="no Adam-mini state"):
    optax_mini.convert_state(state, optax.adamw(1e-2), params)
  with pytest.raises(ValueError, match="structured otherwise"):
    optax_mini.convert_state(state, optax_mini.scale_by_adam_mini(head_dim=16, mu_dtype=jnp.int8), params)
  wider = jax.tree.map(lambda x: jnp.zeros(x.shape[:-1] + (2 * x.shape[-1],)), params)
  with pytest.raises(ValueError, match=r"m has shape .*Pass the parameters the state was made for"):
    optax_mini.convert_state(state, optax_mini.adam_mini(1e-2, head_dim=16, mu_dtype=jnp.int8), wider)
  other = dict(params, extra={"kernel": jnp.zeros((4, 4))})
  with pytest.raises(ValueError, match="tree structure"):
    optax_mini.convert_state(state, optax_mini.adam_mini(1e-2, head_dim=16, mu_dtype=jnp.int8), other)


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 devices (the root conftest sets XLA_FLAGS)")
def test_sharded_state_converts_as_one_device():
  mesh = jax.make_mesh((4, 2), ("fsdp", "tp"))
  params = {"mlp": {"kernel": jnp.asarray(np.random.default_rng(0).normal(size=(256, 512)), jnp.float32)}}
  float_tx = optax_mini.adam_mini(1e-2)
  int8_tx = optax_mini.adam_mini(1e-2, mu_dtype=jnp.int8)
  state = float_tx.init(params)
  m = jnp.asarray(np.random.default_rng(1).normal(size=(256, 512)) * 1e-3, jnp.float32)
  state = (state[0]._replace(mu={"mlp": {"kernel": m}}),) + tuple(state[1:])
  want = optax_mini.convert_state(state, int8_tx, params)
  sharding = NamedSharding(mesh, P("fsdp", "tp"))
  sharded_params = jax.device_put(params, {"mlp": {"kernel": sharding}})
  sharded_state = jax.device_put(state, optax_mini.state_shardings(float_tx, sharded_params))
  got = optax_mini.convert_state(sharded_state, int8_tx, sharded_params)
  q = got[0].mu["mlp"]["kernel"]
  assert q.codes.sharding.spec == P("fsdp", "tp")
  np.testing.assert_array_equal(np.asarray(q.codes), np.asarray(want[0].mu["mlp"]["kernel"].codes))
  np.testing.assert_array_equal(np.asarray(q.scales), np.asarray(want[0].mu["mlp"]["kernel"].scales))


def test_nnx_optimizer_state_converts():
  nnx = pytest.importorskip("flax.nnx")

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.mlp = nnx.Linear(64, 256, rngs=rngs)

  def loss_fn(model, x):
    return jnp.mean(model.mlp(x) ** 2)

  model = Model(nnx.Rngs(0))
  old = nnx.Optimizer(model, optax_mini.adam_mini(1e-2), wrt=nnx.Param)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 64)), jnp.float32)
  for _ in range(3):
    old.update(model, nnx.grad(loss_fn)(model, x))
  tx = optax_mini.adam_mini(1e-2, mu_dtype=jnp.int8)
  new = nnx.Optimizer(model, tx, wrt=nnx.Param)
  converted = optax_mini.convert_state(old.opt_state, tx, nnx.state(model, nnx.Param))
  nnx.update(new.opt_state, nnx.state(converted))
  new.step[...] = old.step[...]
  # The optimizer now holds the float64 quantization of the old m.
  m = np.asarray(nnx.as_pure(old.opt_state)[0].mu["mlp"]["kernel"])
  q = nnx.as_pure(new.opt_state)[0].mu["mlp"]["kernel"]
  want, scales, tie = reference_quantize(m, REFERENCE_CODES["power"])
  assert np.all((np.asarray(q.codes) == want) | tie)
  np.testing.assert_array_equal(np.asarray(q.scales), scales.astype(np.float32))
  assert int(nnx.as_pure(new.opt_state)[0].count) == 3
  before = float(loss_fn(model, x))
  for _ in range(3):
    new.update(model, nnx.grad(loss_fn)(model, x))
  assert float(loss_fn(model, x)) < before
