"""haliax models (Levanter's): the partition from the axes' names.

The model is written as Levanter's Llama writes it (``levanter.models.llama``,
``levanter.layers.attention``): ``hnn.Linear`` weights ``[Out..., In...]``
with the query's output split into ``(kv_heads, q_heads_per_group,
head_size)``, decoder layers under ``hnn.Stacked`` (a leading layer axis on
every leaf), ``hnn.Embedding`` and an untied ``lm_head``; toy sizes. The
blocks each leaf gets are compared with counts from those sizes; the state
is sharded with haliax's own recipe (``infer_resource_partitions``, what
Levanter's trainer does) on 8 devices and must train as one device does.
The recorded Levanter trees (``tests/third_party/trees/levanter_*.json``)
check the real models' sizes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_mini

hax = pytest.importorskip(
    "haliax", reason="haliax is not installed (pip install haliax==1.4.dev453; in the test extra)"
)
eqx = pytest.importorskip("equinox", reason="equinox is not installed (haliax needs it)")
hnn = hax.nn

Batch, Pos, KeyPos = hax.Axis("batch", 4), hax.Axis("position", 16), hax.Axis("key_position", 16)
Embed, Vocab, Mlp = hax.Axis("embed", 64), hax.Axis("vocab", 64), hax.Axis("mlp", 128)
KVHeads, QPerGroup = hax.Axis("kv_heads", 2), hax.Axis("q_heads_per_group", 2)
Heads, HeadSize = hax.Axis("heads", 4), hax.Axis("head_size", 16)
Layers = hax.Axis("layers", 2)


def _linear(In, Out, key):
  """``hnn.Linear`` as Levanter's Llama makes them: no bias, ``[Out..., In...]``."""
  return hnn.Linear.init(In=In, Out=Out, key=key, use_bias=False, out_first=True)


class Attention(eqx.Module):
  q_proj: hnn.Linear
  k_proj: hnn.Linear
  v_proj: hnn.Linear
  o_proj: hnn.Linear

  @staticmethod
  def init(*, key):
    kq, kk, kv, ko = jax.random.split(key, 4)
    return Attention(
        _linear(Embed, (KVHeads, QPerGroup, HeadSize), kq),
        _linear(Embed, (KVHeads, HeadSize), kk),
        _linear(Embed, (KVHeads, HeadSize), kv),
        _linear((Heads, HeadSize), Embed, ko),
    )

  def __call__(self, x):
    q = self.q_proj(x)
    k = self.k_proj(x).rename({Pos.name: KeyPos.name})
    v = self.v_proj(x).rename({Pos.name: KeyPos.name})
    scores = hax.dot(q, k, axis=HeadSize) / math.sqrt(HeadSize.size)
    causal = hax.arange(Pos).broadcast_axis(KeyPos) >= hax.arange(KeyPos).broadcast_axis(Pos)
    weights = hax.nn.softmax(hax.where(causal, scores, -1e9), axis=KeyPos)
    out = hax.dot(weights, v, axis=KeyPos).flatten_axes((KVHeads, QPerGroup), Heads)
    return self.o_proj(out)


class DecoderLayer(eqx.Module):
  self_attn: Attention
  gate_proj: hnn.Linear
  up_proj: hnn.Linear
  down_proj: hnn.Linear
  input_layernorm: hnn.RmsNorm
  post_attention_layernorm: hnn.RmsNorm

  @staticmethod
  def init(*, key):
    ka, kg, ku, kd = jax.random.split(key, 4)
    return DecoderLayer(
        Attention.init(key=ka),
        _linear(Embed, Mlp, kg),
        _linear(Embed, Mlp, ku),
        _linear(Mlp, Embed, kd),
        hnn.RmsNorm.init(Embed, use_bias=False),
        hnn.RmsNorm.init(Embed, use_bias=False),
    )

  def __call__(self, x):
    x = x + self.self_attn(self.input_layernorm(x))
    h = self.post_attention_layernorm(x)
    return x + self.down_proj(hax.nn.silu(self.gate_proj(h)) * self.up_proj(h))


class Llama(eqx.Module):
  """Levanter's LlamaLMHeadModel, cut down: its parameter tree's structure."""

  embeddings: hnn.Embedding
  layers: hnn.Stacked
  norm: hnn.RmsNorm
  lm_head: hnn.Linear

  @staticmethod
  def init(*, key):
    ke, kl, kh = jax.random.split(key, 3)
    return Llama(
        hnn.Embedding.init(Vocab, Embed, key=ke),
        hnn.Stacked.init(Layers, DecoderLayer)(key=jax.random.split(kl, Layers.size)),
        hnn.RmsNorm.init(Embed, use_bias=False),
        _linear(Embed, Vocab, kh),
    )

  def __call__(self, tokens):
    x = self.embeddings(tokens)
    x = self.layers.fold(x)
    return self.lm_head(self.norm(x))


def _params(model):
  return eqx.filter(model, eqx.is_inexact_array)


def test_blocks_follow_the_axes_names():
  """One v per query head (kv_heads x q_heads_per_group), key/value head,
  value and output neuron, MLP neuron, token, and norm per layer: the
  official partition of the same Llama, with no head_dim, rules or stacked
  axes passed."""
  model = Llama.init(key=jax.random.key(0))
  nu = optax_mini.adam_mini(1e-3).init(_params(model))[0].nu
  layer, L = nu.layers.stacked, Layers.size
  v_shape = lambda leaf: leaf.array.shape  # noqa: E731 (v is named: a NamedArray)
  assert v_shape(layer.self_attn.q_proj.weight) == (L, KVHeads.size, QPerGroup.size)
  assert v_shape(layer.self_attn.k_proj.weight) == (L, KVHeads.size)
  assert v_shape(layer.self_attn.v_proj.weight) == (L, KVHeads.size, HeadSize.size)
  assert v_shape(layer.self_attn.o_proj.weight) == (L, Embed.size)
  assert v_shape(layer.gate_proj.weight) == v_shape(layer.up_proj.weight) == (L, Mlp.size)
  assert v_shape(layer.down_proj.weight) == (L, Embed.size)
  assert v_shape(layer.input_layernorm.weight) == (L,)
  assert v_shape(nu.norm.weight) == ()
  assert v_shape(nu.embeddings.weight) == (Vocab.size,)
  assert v_shape(nu.lm_head.weight) == (Vocab.size,)
  # v names the axes it keeps (haliax shards it by them).
  assert layer.self_attn.q_proj.weight.axes == (Layers, KVHeads, QPerGroup)
  assert nu.lm_head.weight.axes == (Vocab,)
  report = optax_mini.explain(_params(model))
  per_layer = Heads.size + KVHeads.size + KVHeads.size * HeadSize.size + Embed.size + 2 * Mlp.size + Embed.size + 2
  assert report.num_v == L * per_layer + 1 + 2 * Vocab.size


def test_out_last_weights_and_fused_qkv():
  """``out_first=False`` (Levanter's GPT-2) puts the outputs last; a fused
  ``c_attn`` names its q|k|v axis ``qkv``: each part gets its own blocks."""
  qkv = hax.Axis("qkv", 3)
  tree = {
      "c_attn": hnn.Linear.init(In=Embed, Out=(qkv, Heads, HeadSize), key=jax.random.key(1), out_first=False),
      "mlp": {"c_fc": hnn.Linear.init(In=Embed, Out=Mlp, key=jax.random.key(2), out_first=False)},
  }
  report = optax_mini.explain(_params(tree))
  rows = {row.path: row for row in report.rows}
  c_attn = next(row for path, row in rows.items() if "c_attn" in path and "weight" in path)
  assert c_attn.shape == (Embed.size, 3, Heads.size, HeadSize.size)
  # q and k: one v per head; v: one per output neuron.
  assert c_attn.num_blocks == 2 * Heads.size + Heads.size * HeadSize.size
  c_fc = next(row for path, row in rows.items() if "c_fc" in path and "weight" in path)
  assert c_fc.v_shape == (Mlp.size,)


def test_an_axis_no_module_names_raises():
  """A weight with an axis that is neither the module's In or Out nor a
  Stacked layer axis (here vmapped by hand) cannot be partitioned safely."""
  Ensemble = hax.Axis("ensemble", 3)
  linear = hax.vmap(lambda key: hnn.Linear.init(In=Embed, Out=Mlp, key=key), Ensemble)(
      jax.random.split(jax.random.key(0), 3)
  )
  with pytest.raises(ValueError, match=r"weight.*\('ensemble', 'mlp', 'embed'\).*'ensemble' is none of"):
    optax_mini.adam_mini(1e-3).init(_params({"up": linear}))


def _loss(model, tokens):
  logits = model(hax.named(tokens[:, :-1], (Batch, Pos))).array
  return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def _train(mu_dtype, mesh=None, steps=20, model=None):
  model = Llama.init(key=jax.random.key(0)) if model is None else model
  tokens = jax.random.randint(jax.random.key(1), (Batch.size, Pos.size + 1), 0, Vocab.size)
  tx = optax_mini.adam_mini(1e-2, weight_decay=0.0, mu_dtype=mu_dtype)

  @eqx.filter_jit
  def step(model, state):
    loss, grads = eqx.filter_value_and_grad(_loss)(model, tokens)
    updates, state = tx.update(grads, state, _params(model))
    return eqx.apply_updates(model, updates), state, loss

  if mesh is None:
    state = tx.init(_params(model))
  else:
    # Levanter's recipe: shardings inferred from the state's axis names.
    model = hax.shard(model)
    shapes = eqx.filter_eval_shape(tx.init, _params(model))
    shardings = hax.partitioning.infer_resource_partitions(
        shapes, mesh=mesh, preserve_existing_shardings=False
    )
    state = jax.jit(tx.init, out_shardings=shardings)(_params(model))
  losses = []
  for _ in range(steps):
    model, state, loss = step(model, state)
    losses.append(float(loss))
  return losses, state


@pytest.mark.parametrize("mu_dtype", [None, jnp.int8], ids=["float32", "int8"])
def test_training_a_haliax_model_lowers_its_loss(mu_dtype):
  losses, _ = _train(mu_dtype)
  assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 devices (the root conftest sets XLA_FLAGS)")
@pytest.mark.parametrize("mu_dtype", [None, jnp.int8], ids=["float32", "int8"])
def test_haliax_sharding_recipe_trains_as_one_device(mu_dtype):
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
  mapping = {"embed": "data", "mlp": "model", "heads": "model", "kv_heads": "model", "vocab": "model"}
  one, _ = _train(mu_dtype)
  model = Llama.init(key=jax.random.key(0))  # initialised unsharded, then placed
  with hax.axis_mapping(mapping), jax.set_mesh(mesh):
    eight, state = _train(mu_dtype, mesh, model=model)
  # Sharded sums add in another order; with int8 m that moves a few codes by
  # one step (the rounding draws are the same: they hash global positions).
  np.testing.assert_allclose(eight, one, rtol=2e-3 if mu_dtype else 1e-5)
  # v of the q_proj keeps (layers, kv_heads, q_heads_per_group): kv_heads on "model".
  q_v = state[0].nu.layers.stacked.self_attn.q_proj.weight.array
  want = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "model", None))
  assert q_v.sharding.is_equivalent_to(want, q_v.ndim), q_v.sharding
  if mu_dtype is not None:
    # Quantized (>= 4096 elements per layer): the gate_proj's codes are named
    # as the weight; its scales [layers, mlp, 64 / 64 = 1 block] cannot be
    # split over "data", so their blocks axis is named apart.
    mu = state[0].mu.layers.stacked.gate_proj.weight
    assert mu.codes.axes == (Layers, Mlp, Embed)
    assert [a.name for a in mu.scales.axes] == ["layers", "mlp", "embed_blocks"]


def test_convert_state_keeps_the_names():
  """A float32-m state converted to int8 m (and back) has the structure
  ``tx.init`` gives, names included, and its m within the power map's
  rounding of the original."""
  params = _params(Llama.init(key=jax.random.key(0)))
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.01), params)
  float_tx, int8_tx = optax_mini.adam_mini(1e-3), optax_mini.adam_mini(1e-3, mu_dtype=jnp.int8)
  _, state = float_tx.update(grads, float_tx.init(params), params)
  converted = optax_mini.convert_state(state, int8_tx, params)
  structure = jax.tree_util.tree_structure
  assert structure(converted) == structure(int8_tx.init(params))
  back = optax_mini.convert_state(converted, float_tx, params)
  assert structure(back) == structure(state)
  m, m_back = state[0].mu.lm_head.weight.array, back[0].mu.lm_head.weight.array
  np.testing.assert_allclose(m_back, m, atol=0.016 * float(jnp.abs(m).max()))
  int8_tx.update(grads, converted, params)  # the update takes it


def test_readme_levanter_config_trains_with_levanters_trainer(tmp_path):
  """The README's Levanter optimizer config, handed to Levanter's own
  Trainer (its sharding of the state included) on a small Llama over 8
  devices: the loss falls, with float32 and int8 m."""
  levanter = pytest.importorskip(
      "levanter",
      reason="levanter is not installed (it pulls ray, wandb, datasets...: "
      "pip install levanter==1.2.dev1644); the haliax tests above cover the library's part",
  )
  import pathlib
  import re

  from levanter.checkpoint import CheckpointerConfig
  from levanter.models.llama import LlamaConfig
  from levanter.models.lm_model import LmExample
  from levanter.tracker import NoopConfig
  from levanter.trainer import Trainer, TrainerConfig

  readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
  code = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "levanter" in b)
  namespace: dict = {}
  exec(compile(code.replace('"adam_mini_jax"', '"adam_mini_jax_test"'), "README.md", "exec"), namespace)  # noqa: S102
  model_config = LlamaConfig(seq_len=32, hidden_dim=64, intermediate_dim=128, num_layers=2,
                             num_heads=4, num_kv_heads=2)
  vocab = hax.Axis("vocab", 64)
  tokens = np.random.default_rng(0).integers(0, vocab.size, (8, model_config.seq_len))

  def loss_fn(model, example, key=None, **kwargs):
    logits = model(example.tokens, attn_mask=example.attn_mask).array
    return optax.softmax_cross_entropy_with_integer_labels(
        logits[:, :-1].astype(jnp.float32), example.tokens.array[:, 1:]).mean()

  for int8 in (False, True):
    config = TrainerConfig(num_train_steps=20, train_batch_size=8, tracker=NoopConfig(),
                           checkpointer=CheckpointerConfig(base_path=str(tmp_path / str(int8))),
                           log_jaxprs=False, log_xla_hlo=False, id=f"adam-mini-int8-{int8}",
                           log_dir=tmp_path / "logs",
                           require_accelerator=False)
    levanter.initialize(config)
    optimizer = namespace["AdamMiniConfig"](learning_rate=3e-3, int8_first_moment=int8).build(20)
    with Trainer(config, optimizer, loss_fn) as trainer:
      state = trainer.initial_state(
          jax.random.PRNGKey(0), model_init=lambda: model_config.build(vocab, key=jax.random.PRNGKey(1)))
      batch = hax.named(jnp.asarray(tokens, jnp.int32), (trainer.TrainBatch, model_config.Pos))
      example = hax.vmap(LmExample.causal, trainer.TrainBatch)(batch)
      losses = []
      for _ in range(20):
        info = trainer.train_step(state, example)
        state, _ = info.state, losses.append(info.loss)
    assert losses[-1] < 0.5 * losses[0], (int8, losses)


def test_levanters_own_mini_gives_the_same_updates():
  """An independent implementation on the same tree: Levanter's ``mini``
  optimizer config (full-size v, the blocks as hard-coded mean axes) on a
  multi-head Llama. Its matrices' updates after 3 steps equal these; norms
  differ by design (Levanter gives them plain Adam, the official rule one v
  per tensor) and are left out."""
  pytest.importorskip(
      "levanter",
      reason="levanter is not installed (it pulls ray, wandb, datasets...: "
      "pip install levanter==1.2.dev1644); the haliax tests above cover the library's part",
  )
  from levanter.models.llama import LlamaConfig, LlamaLMHeadModel
  from levanter.optim.adam_mini import MiniConfig

  config = LlamaConfig(seq_len=16, hidden_dim=64, intermediate_dim=128, num_layers=2, num_heads=4, num_kv_heads=4)
  params = _params(LlamaLMHeadModel.init(hax.Axis("vocab", 64), config, key=jax.random.PRNGKey(0)))
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), 3 * len(leaves))
  theirs = MiniConfig(learning_rate=1e-3, weight_decay=0.0, beta2=0.95, warmup=0.0,
                      lr_schedule="constant", max_grad_norm=0.0).build(10)
  ours = optax.chain(optax_mini.scale_by_adam_mini(0.9, 0.95, 1e-8), optax.scale(-1e-3))
  adam = optax.chain(optax.scale_by_adam(0.9, 0.95, 1e-8), optax.scale(-1e-3))
  state_theirs, state_ours, state_adam = theirs.init(params), ours.init(params), adam.init(params)
  for step in range(3):
    grads = treedef.unflatten([
        jax.random.normal(k, x.shape) for k, x in zip(keys[step * len(leaves):], leaves)])
    u_theirs, state_theirs = theirs.update(grads, state_theirs, params)
    u_ours, state_ours = ours.update(grads, state_ours, params)
    u_adam, state_adam = adam.update(grads, state_adam, params)
  compared = 0
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(u_ours), jax.tree.leaves(u_theirs)):
    if "norm" in jax.tree_util.keystr(path):
      continue
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-9, err_msg=jax.tree_util.keystr(path))
    compared += 1
  assert compared == 9  # q, k, v, o, gate, up, down, embedding, lm_head
  # ... where plain Adam's differ (the comparison can fail).
  assert not np.allclose(u_adam.lm_head.weight.array, u_ours.lm_head.weight.array, rtol=1e-2)


def test_heads_named_otherwise_raise_with_a_rule_that_settles_them():
  """Output axes the name table does not know, under a query rule: an error
  whose suggested rule (the weight's own pattern, not its module's, which
  would claim the 2-D bias too) settles it."""
  groups, per = hax.Axis("groups", 2), hax.Axis("per", 8)
  params = _params({"q_proj": hnn.Linear.init(In=Embed, Out=(groups, per), key=jax.random.key(0))})
  with pytest.raises(ValueError, match=r"output axes \['groups', 'per'\].*Rule\('q_proj/weight', 'heads'"):
    optax_mini.explain(params)
  rules = optax_mini.BlockRules(rules=[optax_mini.Rule("q_proj/weight", "heads", layout="n h i")])
  nu = optax_mini.adam_mini(1e-3, blocks=rules).init(params)[0].nu
  assert nu["q_proj"].weight.array.shape == (groups.size,)
  assert nu["q_proj"].bias.array.shape == (groups.size, per.size)  # plain Adam
