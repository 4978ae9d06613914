"""Flax NNX's own sharding recipes work with Adam-mini's reduced state.

Kernels are annotated the way Flax's sharding guide writes them
(``nnx.with_partitioning(init, ("fsdp", "tp"))``); ``nnx.Optimizer`` copies
each parameter's metadata onto its state, so Adam-mini's ``v`` must carry the
names of the axes it keeps (one v per head of a ``tp``-sharded ``q_proj`` is
sharded over ``tp``), or Flax applies a spec of the wrong rank. Runs on 8
virtual CPU devices (the root conftest).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

import optax_mini

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 devices (the root conftest sets XLA_FLAGS)")

DIM, HEADS, HEAD_DIM, VOCAB, STEPS = 16, 4, 4, 32, 3


def annotated(names):
  return nnx.with_partitioning(nnx.initializers.lecun_normal(), names)


class Block(nnx.Module):
  def __init__(self, rngs: nnx.Rngs, dim=DIM, heads=HEADS, head_dim=HEAD_DIM, vocab=VOCAB):
    self.embed = nnx.Embed(vocab, dim, embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02), ("tp", "fsdp")), rngs=rngs)
    self.q_proj = nnx.Linear(dim, heads * head_dim, use_bias=False, kernel_init=annotated(("fsdp", "tp")), rngs=rngs)
    self.v_proj = nnx.Linear(dim, heads * head_dim, use_bias=False, kernel_init=annotated(("fsdp", "tp")), rngs=rngs)
    self.o_proj = nnx.Linear(heads * head_dim, dim, kernel_init=annotated(("tp", "fsdp")),
                             bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("fsdp",)), rngs=rngs)
    self.norm = nnx.RMSNorm(dim, scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("fsdp",)), rngs=rngs)
    self.lm_head = nnx.Linear(dim, vocab, use_bias=False, kernel_init=annotated(("fsdp", "tp")), rngs=rngs)

  def __call__(self, tokens):
    x = self.embed(tokens)
    x = x + self.o_proj(jax.nn.gelu(self.q_proj(x)) * self.v_proj(x))
    return self.lm_head(self.norm(x))


def make_tx():
  return optax_mini.adam_mini(1e-2, b2=0.95, weight_decay=0.1, head_dim=HEAD_DIM)


# With an int8 m: leaves of >= 4096 elements are quantized, so a wider block.
# The scales of embed [512, 256] and q/v/o [256, 256] have one block per row
# (their last axis cannot be split over the mesh); lm_head [256, 512] has two,
# split over tp.
INT8_SIZES = {"dim": 256, "heads": 4, "head_dim": 64, "vocab": 512}


def make_int8_tx():
  return optax_mini.adam_mini(1e-2, b2=0.95, weight_decay=0.1, head_dim=64, mu_dtype=jnp.int8)


def batches():
  rng = np.random.default_rng(0)
  return [rng.integers(0, VOCAB, (8, 6)).astype(np.int32) for _ in range(STEPS)]


@nnx.jit
def train_step(model, optimizer, tokens):
  def loss_fn(model):
    logits = model(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return loss


def train(model, optimizer, shard_batch=lambda b: b):
  for tokens in batches():
    train_step(model, optimizer, shard_batch(tokens))
  return model, optimizer


def one_device(make=make_tx, sizes=None):
  with nnx.use_eager_sharding(False):  # the same model, its annotations unapplied
    model = Block(nnx.Rngs(0), **(sizes or {}))
    optimizer = nnx.Optimizer(model, make(), wrt=nnx.Param)
    return train(model, optimizer)


def assert_close(a, b, rtol=1e-5):
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b), strict=True):
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == y.shape, jax.tree_util.keystr(path)
    assert np.max(np.abs(x - y)) <= rtol * max(np.max(np.abs(y)), 1e-30), jax.tree_util.keystr(path)


def train_and_compare_with_one_device(mesh, model, optimizer):
  shard = lambda b: jax.device_put(b, NamedSharding(mesh, PartitionSpec("fsdp")))  # noqa: E731
  model, optimizer = train(model, optimizer, shard)
  ref_model, ref_optimizer = one_device()
  assert_close(nnx.state(model, nnx.Param), nnx.state(ref_model, nnx.Param))
  assert_close(nnx.state(optimizer), nnx.state(ref_optimizer))


def nu_specs(optimizer):
  specs = nnx.get_partition_spec(nnx.state(optimizer))
  return jax.tree.map(lambda v: PartitionSpec(*v.get_value()) if isinstance(v, nnx.Variable) else v,
                      nnx.to_pure_dict(specs)["opt_state"][0]["nu"], is_leaf=lambda x: isinstance(x, (nnx.Variable, PartitionSpec)))


def padded(spec, ndim):
  entries = tuple(spec)
  return entries + (None,) * (ndim - len(entries))


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit], ids=["auto", "explicit"])
def test_eager_sharding_recipe(axis_type):
  mesh = jax.make_mesh((4, 2), ("fsdp", "tp"), axis_types=(axis_type,) * 2)
  with jax.set_mesh(mesh), nnx.use_eager_sharding(True):
    model = Block(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, make_tx(), wrt=nnx.Param)  # raised before: v took the kernel's spec
    params = nnx.state(model, nnx.Param)
    # Each v carries the spec of the axes it keeps, as state_shardings says.
    want = optax_mini.state_shardings(make_tx(), nnx.to_pure_dict(params))[0].nu
    got = nu_specs(optimizer)
    for (path, w), g in zip(jax.tree_util.tree_flatten_with_path(want)[0], jax.tree.leaves(got, is_leaf=lambda x: isinstance(x, PartitionSpec)), strict=True):
      ndim = len(padded(g, 0))
      assert padded(g, ndim) == padded(w.spec, ndim), jax.tree_util.keystr(path)
    assert padded(got["q_proj"]["kernel"], 1) == ("tp",)  # one v per head, heads over tp
    assert padded(got["embed"]["embedding"], 1) == ("tp",)  # one v per token
    assert padded(got["norm"]["scale"], 0) == ()
    # ... and the arrays are placed that way.
    nu = optimizer.opt_state[0].nu
    assert nu["q_proj"]["kernel"].get_value().sharding.spec == PartitionSpec("tp")
    if axis_type == AxisType.Explicit:
      # Training under sharding in types needs a model written for it (the
      # embedding gather must name its out_sharding); creation is the part
      # that concerns the optimizer.
      return
    train_and_compare_with_one_device(mesh, model, optimizer)


def test_with_sharding_constraint_recipe():
  mesh = jax.make_mesh((4, 2), ("fsdp", "tp"), axis_types=(AxisType.Auto,) * 2)

  @nnx.jit
  def create():
    model = Block(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, make_tx(), wrt=nnx.Param)
    state = nnx.state((model, optimizer))
    nnx.update((model, optimizer), jax.lax.with_sharding_constraint(state, nnx.get_partition_spec(state)))
    return model, optimizer

  with jax.set_mesh(mesh):
    model, optimizer = create()  # raised before: a spec of the wrong rank for v
    assert optimizer.opt_state[0].nu["q_proj"]["kernel"].get_value().sharding.spec == PartitionSpec("tp")
    train_and_compare_with_one_device(mesh, model, optimizer)


def test_unannotated_models_keep_plain_metadata():
  plain = nnx.Linear(DIM, HEADS * HEAD_DIM, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(plain, make_tx(), wrt=nnx.Param)
  v = optimizer.opt_state[0].nu["kernel"]
  assert v.get_value().shape == (HEADS * HEAD_DIM,)  # one per output neuron
  assert v.get_metadata().get("out_sharding") is None


def scales_specs(optimizer):
  """Each int8 m's scales: (shape, the spec they are placed with, their
  Variable's sharding names)."""
  mu = optimizer.opt_state[0].mu
  out = {}
  for path, q in jax.tree_util.tree_flatten_with_path(
      mu, is_leaf=lambda x: isinstance(x, optax_mini.quantize.QuantizedMoment))[0]:
    if isinstance(q, optax_mini.quantize.QuantizedMoment):
      value = q.scales.get_value()
      names = q.scales.get_metadata().get("out_sharding")
      out[jax.tree_util.keystr(path)] = (value.shape, padded(value.sharding.spec, 2), names)
      codes = q.codes.get_value()
      assert padded(codes.sharding.spec, 2) == q.codes.get_metadata()["out_sharding"], path
  assert len(out) == 5  # embed, q/v/o_proj, lm_head; the norm scale and the bias keep float32 m
  return out


def assert_int8_runs_close(model, optimizer, ref_model, ref_optimizer, num_codes):
  """A mesh run against a one-device run, with int8 m. The sharded matmuls
  sum the gradients in another order (float32 rounding); the power map
  resolves momenta near 0 to a millionth of the block's maximum, so such
  differences move some small codes (a few per 10,000 here) and the runs
  drift apart by a fraction of a step. (With the same gradients, a sharded
  int8 update equals one device's: tests/test_int8.py.)"""
  assert_close(nnx.state(model, nnx.Param), nnx.state(ref_model, nnx.Param), rtol=2e-2)
  codes = [(np.asarray(a), np.asarray(b)) for a, b in zip(
      jax.tree.leaves(nnx.state(optimizer)), jax.tree.leaves(nnx.state(ref_optimizer)), strict=True)
      if np.asarray(b).dtype == np.int8]
  assert len(codes) == num_codes
  differ = sum(int(np.sum(a != b)) for a, b in codes) / sum(b.size for _, b in codes)
  assert differ < 1e-3, differ


def train_int8_and_compare_with_one_device(mesh, model, optimizer):
  before = scales_specs(optimizer)
  shard = lambda b: jax.device_put(b, NamedSharding(mesh, PartitionSpec("fsdp")))  # noqa: E731
  model, optimizer = train(model, optimizer, shard)
  assert scales_specs(optimizer) == before  # placement survives the updates
  assert_int8_runs_close(model, optimizer, *one_device(make_int8_tx, INT8_SIZES), num_codes=5)


def test_eager_sharding_recipe_with_int8_mu():
  # Raised at nnx.Optimizer creation before: each scales array took its
  # parameter's spec, and [512, 1] cannot be split 4 ways.
  mesh = jax.make_mesh((4, 2), ("fsdp", "tp"), axis_types=(AxisType.Auto,) * 2)
  with jax.set_mesh(mesh), nnx.use_eager_sharding(True):
    model = Block(nnx.Rngs(0), **INT8_SIZES)
    optimizer = nnx.Optimizer(model, make_int8_tx(), wrt=nnx.Param)
    got = scales_specs(optimizer)
    assert got["['embed']['embedding']"] == ((512, 1), ("tp", None), ("tp", None))
    assert got["['q_proj']['kernel']"] == ((256, 1), ("fsdp", None), ("fsdp", None))
    assert got["['lm_head']['kernel']"] == ((256, 2), ("fsdp", "tp"), ("fsdp", "tp"))
    # What state_shardings says for the same parameters.
    want = optax_mini.state_shardings(make_int8_tx(), nnx.to_pure_dict(nnx.state(model, nnx.Param)))[0].mu
    for name in ("embed", "q_proj", "lm_head"):
      leaf = jax.tree.leaves(want[name], is_leaf=lambda x: isinstance(x, optax_mini.quantize.QuantizedMoment))[0]
      key = f"['{name}']['{'embedding' if name == 'embed' else 'kernel'}']"
      assert padded(leaf.scales.spec, 2) == got[key][1], name
    train_int8_and_compare_with_one_device(mesh, model, optimizer)


def test_with_sharding_constraint_recipe_with_int8_mu():
  mesh = jax.make_mesh((4, 2), ("fsdp", "tp"), axis_types=(AxisType.Auto,) * 2)

  @nnx.jit
  def create():
    model = Block(nnx.Rngs(0), **INT8_SIZES)
    optimizer = nnx.Optimizer(model, make_int8_tx(), wrt=nnx.Param)
    state = nnx.state((model, optimizer))
    nnx.update((model, optimizer), jax.lax.with_sharding_constraint(state, nnx.get_partition_spec(state)))
    return model, optimizer

  with jax.set_mesh(mesh):
    model, optimizer = create()
    assert scales_specs(optimizer)["['embed']['embedding']"][1] == ("tp", None)
    train_int8_and_compare_with_one_device(mesh, model, optimizer)


# Flax's scan-over-layers pattern: layers created under nnx.vmap (a layer axis
# 0 on every parameter, unsharded), applied with nnx.scan.
SCAN_DIM, SCAN_MLP, SCAN_LAYERS = 1024, 384, 4


class ScanLayer(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.mlp = nnx.Linear(SCAN_DIM, SCAN_MLP, use_bias=False, kernel_init=annotated(("fsdp", "tp")), rngs=rngs)
    self.norm = nnx.RMSNorm(SCAN_DIM, scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("fsdp",)), rngs=rngs)


class ScanModel(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    @nnx.split_rngs(splits=SCAN_LAYERS)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: None})
    def make(rngs):
      return ScanLayer(rngs)

    self.layers = make(rngs)

  def __call__(self, x):
    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    def apply(layer, x):
      return x + jnp.tile(jax.nn.gelu(layer.mlp(layer.norm(x))), (1, SCAN_DIM // SCAN_MLP + 1))[:, :SCAN_DIM]

    return apply(self.layers, x)


def _scan_tx(mu_dtype):
  return optax_mini.adam_mini(1e-3, b2=0.95, head_dim=64, mu_dtype=mu_dtype,
                              blocks=optax_mini.BlockRules(stacked={"layers": 0}))


def _scan_train(model, optimizer, shard=lambda x: x):
  @nnx.jit
  def step(model, optimizer, x):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
    optimizer.update(model, grads)
    return loss

  rng = np.random.default_rng(0)
  for _ in range(STEPS):
    step(model, optimizer, shard(jnp.asarray(rng.standard_normal((8, SCAN_DIM)), jnp.float32)))
  return model, optimizer


@pytest.mark.parametrize("mu_dtype", [None, jnp.int8], ids=["float32", "int8"])
def test_scanned_layers_with_eager_sharding(mu_dtype):
  mesh = jax.make_mesh((4, 2), ("fsdp", "tp"), axis_types=(AxisType.Auto,) * 2)
  with jax.set_mesh(mesh), nnx.use_eager_sharding(True):
    model = ScanModel(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, _scan_tx(mu_dtype), wrt=nnx.Param)
    nu = optimizer.opt_state[0].nu["layers"]
    # One v per layer and output neuron / per layer and norm, the neurons over tp.
    assert nu["mlp"]["kernel"].get_value().shape == (SCAN_LAYERS, SCAN_MLP)
    assert padded(nu["mlp"]["kernel"].get_value().sharding.spec, 2) == (None, "tp")
    assert nu["norm"]["scale"].get_value().shape == (SCAN_LAYERS,)
    mu = optimizer.opt_state[0].mu["layers"]
    if mu_dtype is not None:
      q = mu["mlp"]["kernel"]
      assert isinstance(q, optax_mini.quantize.QuantizedMoment)
      assert padded(q.codes.get_value().sharding.spec, 3) == (None, "fsdp", "tp")
      # 384 = 3 blocks of 128: not split over tp = 2, so the blocks axis is whole.
      assert q.scales.get_value().shape == (SCAN_LAYERS, SCAN_DIM, 3)
      assert padded(q.scales.get_value().sharding.spec, 3) == (None, "fsdp", None)
      # Each layer's norm scale has 1024 elements (the stack 4096): float32 m.
      assert mu["norm"]["scale"].get_value().dtype == jnp.float32
    model, optimizer = _scan_train(model, optimizer, lambda x: jax.device_put(x, NamedSharding(mesh, PartitionSpec("fsdp"))))
  with nnx.use_eager_sharding(False):
    ref_model, ref_optimizer = _scan_train(*(lambda m: (m, nnx.Optimizer(m, _scan_tx(mu_dtype), wrt=nnx.Param)))(ScanModel(nnx.Rngs(0))))
  if mu_dtype is None:
    assert_close(nnx.state(model, nnx.Param), nnx.state(ref_model, nnx.Param))
    assert_close(nnx.state(optimizer), nnx.state(ref_optimizer))
  else:
    assert_int8_runs_close(model, optimizer, ref_model, ref_optimizer, num_codes=1)


@pytest.mark.parametrize("make", [make_tx, make_int8_tx], ids=["float32_m", "int8_m"])
def test_train_state_over_split_params(make):
  """maxdiffusion's WAN trainer: ``nnx.split(model, nnx.Param, ...)``, a
  Flax ``TrainState`` over the ``nnx.State`` of Param Variables, gradients
  from ``jax.grad`` of that State (Variables with the parameters' names). The
  state's v Variables name the axes they keep, and the first update raised
  (the gradients' tree did not match v's); optax.adamw runs. Now 3 steps on
  8 devices equal one device's, and v keeps its names."""
  from flax.training import train_state

  sizes = INT8_SIZES if make is make_int8_tx else {}
  rtol = 2e-2 if make is make_int8_tx else 1e-5

  def run(mesh):
    model = Block(nnx.Rngs(0), **sizes)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = train_state.TrainState.create(apply_fn=None, params=params, tx=make())

    @jax.jit
    def step(state, tokens):
      def loss_fn(p):
        logits = nnx.merge(graphdef, p, rest)(tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

      return state.apply_gradients(grads=jax.grad(loss_fn)(state.params))

    vocab = sizes.get("vocab", VOCAB)
    rng = np.random.default_rng(0)
    for _ in range(STEPS):
      tokens = rng.integers(0, vocab, (8, 6)).astype(np.int32)
      if mesh is not None:
        tokens = jax.device_put(tokens, NamedSharding(mesh, PartitionSpec("fsdp")))
      state = step(state, tokens)
    return state

  with nnx.use_eager_sharding(False):
    ref = run(None)
  mesh = jax.make_mesh((4, 2), ("fsdp", "tp"), axis_types=(AxisType.Auto,) * 2)
  with jax.set_mesh(mesh), nnx.use_eager_sharding(True):
    state = run(mesh)
    nu = state.opt_state[0].nu
    assert nu["q_proj"]["kernel"].get_metadata()["out_sharding"] == ("tp",)
    assert nu["q_proj"]["kernel"].get_value().sharding.spec == PartitionSpec("tp")
  assert_close(nnx.to_pure_dict(state.params), nnx.to_pure_dict(ref.params), rtol=rtol)
