"""Flax Linen's own sharding recipe works with Adam-mini's reduced state.

Linen's recipe (flax's "Scale up on multiple devices" guide, its lm1b
example's ``setup_initial_state``): kernels annotated with
``nn.with_logical_partitioning``, ``TrainState.create`` under
``jax.eval_shape``, shardings from ``nn.get_partition_spec`` of the whole
state through logical axis rules, then ``jax.jit(init, out_shardings=...)``.
``tx.init`` sees the boxed parameters and optax rebuilds the state in their
boxes, so Adam-mini's ``v`` must carry the names of the axes it keeps (a
query's one v per head is sharded over the heads' mesh axis) or the recipe
fails on a spec of the wrong rank. Runs on 8 virtual CPU devices (the root
conftest), against the same steps on one device.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import optax_mini

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 devices (the root conftest sets XLA_FLAGS)")

VOCAB, DIM, HEADS, HEAD_DIM, MLP, STEPS = 128, 64, 4, 16, 128, 3
RULES = (("vocab", "tp"), ("embed", "fsdp"), ("mlp", "tp"), ("heads", "tp"), ("kv", None))


def annotated(names, init=None):
  return nn.with_logical_partitioning(init or nn.initializers.lecun_normal(), names)


class SelfAttention(nn.Module):
  @nn.compact
  def __call__(self, x):
    dense = lambda name, names: nn.DenseGeneral(  # noqa: E731
        (HEADS, HEAD_DIM), kernel_init=annotated(names), use_bias=False, name=name)
    q = dense("query", ("embed", "heads", "kv"))(x)
    k = dense("key", ("embed", "heads", "kv"))(x)
    v = dense("value", ("embed", "heads", "kv"))(x)
    weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / HEAD_DIM**0.5)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    return nn.DenseGeneral(DIM, axis=(-2, -1), kernel_init=annotated(("heads", "kv", "embed")),
                           use_bias=False, name="out")(out)


class Model(nn.Module):
  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(VOCAB, DIM, embedding_init=annotated(("vocab", "embed"), nn.initializers.normal(0.02)))(tokens)
    x = x + SelfAttention()(nn.RMSNorm(scale_init=annotated(("embed",), nn.initializers.ones))(x))
    h = nn.Dense(MLP, kernel_init=annotated(("embed", "mlp")), name="up")(x)
    x = x + nn.Dense(DIM, kernel_init=annotated(("mlp", "embed")), name="down")(jax.nn.gelu(h))
    return nn.Dense(VOCAB, kernel_init=annotated(("embed", "vocab")), use_bias=False, name="lm_head")(x)


def loss_fn(params, apply_fn, tokens):
  logits = apply_fn({"params": params}, tokens[:, :-1])
  targets = jax.nn.one_hot(tokens[:, 1:], VOCAB)
  return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits), -1))


def train(mu_dtype, mesh):
  model = Model()
  tokens = jax.random.randint(jax.random.key(1), (8, 17), 0, VOCAB)
  tx = optax_mini.adam_mini(3e-3, head_dim=HEAD_DIM, mu_dtype=mu_dtype)

  def init(key):
    params = model.init(key, tokens[:, :-1])["params"]
    return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  def step(state, tokens):
    grads = jax.grad(loss_fn)(state.params, state.apply_fn, tokens)
    return state.apply_gradients(grads=grads)

  if mesh is None:
    state = jax.jit(init)(jax.random.key(0))
    step = jax.jit(step)
  else:
    abstract = jax.eval_shape(init, jax.random.key(0))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, RULES)
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
    step = jax.jit(step, in_shardings=(shardings, None), out_shardings=shardings)
  for _ in range(STEPS):
    state = step(state, tokens)
  return state


@pytest.mark.parametrize("mu_dtype", [None, jnp.int8], ids=["float32 m", "int8 m"])
def test_linen_logical_partitioning_recipe(mu_dtype):
  mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(2, 4), ("fsdp", "tp"))
  sharded = train(mu_dtype, mesh)
  single = train(mu_dtype, None)
  nu = sharded.opt_state[0].nu
  # v keeps the names of the axes it keeps: one v per head, over the heads' mesh axis.
  query_v = nu["SelfAttention_0"]["query"]["kernel"]
  assert query_v.names == ("heads",) and query_v.value.shape == (HEADS,)
  assert query_v.value.sharding.spec == PartitionSpec("tp")
  assert nu["lm_head"]["kernel"].value.sharding == NamedSharding(mesh, PartitionSpec("tp"))
  assert nu["up"]["kernel"].names == ("mlp",) and nu["Embed_0"]["embedding"].names == ("vocab",)
  pairs = zip(jax.tree.leaves(nn.unbox(sharded.params)), jax.tree.leaves(nn.unbox(single.params)))
  if mu_dtype is None:
    for a, b in pairs:
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    return
  # int8 m: the sharded matmuls sum the gradients in another order, which
  # moves a few small codes (tests/test_nnx_sharding.py says why); the
  # codes are boxed with the parameter's names, the scales with their own.
  up = sharded.opt_state[0].mu["up"]["kernel"]
  assert up.codes.names == ("embed", "mlp") and up.codes.value.dtype == jnp.int8
  assert up.scales.value.shape == (DIM, 1) and up.scales.names == ("embed", None)
  for a, b in pairs:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-2, atol=1e-4)
  codes = [(np.asarray(a), np.asarray(b)) for a, b in zip(
      jax.tree.leaves(nn.unbox(sharded.opt_state)), jax.tree.leaves(nn.unbox(single.opt_state)))
      if np.asarray(b).dtype == np.int8]
  assert codes and sum(int(np.sum(a != b)) for a, b in codes) / sum(b.size for _, b in codes) < 1e-3
