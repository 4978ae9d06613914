"""penzai models: blocks read from the model's layers, never from axis order.

Penzai's trainer hands the optimizer ``pz.freeze_params(params)``, whose leaves'
key paths are only ``[i].value.data_array`` and whose ``NamedArray`` s keep
their axes in the order the model was built or loaded in (``Linear.from_config``
``[in..., out...]``; penzai's Hugging Face loader PyTorch's ``[out, in]``, with
a ``LayerStack``'s axis last instead of first). The models here are penzai's
own (``llamalike_common``, ``gpt_neox``), toy sizes, built fresh and through
penzai's Hugging Face loader from a stand-in for a downloaded model (zeros of
the checkpoint's shapes: no weights are fetched). Each leaf's blocks are
compared with what penzai's layer code says each named axis is (a table by
label, written from ``llamalike_common.py`` / ``gpt_neox.py``), the number of
``v`` values with counts from the config, and three steps against a float64
NumPy Adam-mini that averages by axis name.
"""

from __future__ import annotations

import math
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_mini

pz_module = pytest.importorskip(
    "penzai", reason="penzai is not installed (pip install penzai==0.2.5; in the test extra)"
)
from penzai import pz  # noqa: E402
from penzai.models.transformer.variants import gpt_neox  # noqa: E402
from penzai.models.transformer.variants import llamalike_common as llamalike  # noqa: E402
from penzai.toolshed import basic_training  # noqa: E402

D, HEADS, KV, HD, MLP, VOCAB, LAYERS = 96, 6, 2, 16, 200, 311, 2
LR, B1, B2, EPS, WD = 1e-2, 0.9, 0.95, 1e-8, 0.1
HEAD_AXES = {"heads", "query_heads", "head_groups"}


def llama_config(**changes):
  config = dict(
      num_kv_heads=KV, query_head_multiplier=HEADS // KV, embedding_dim=D, projection_dim=HD,
      mlp_hidden_dim=MLP, num_decoder_blocks=LAYERS, vocab_size=VOCAB, mlp_variant="swiglu",
      tie_embedder_and_logits=False,
  )
  return llamalike.LlamalikeTransformerConfig(**{**config, **changes})


def neox_config(**changes):
  config = dict(
      num_attention_heads=HEADS, embedding_dim=D, projection_dim=HD, mlp_hidden_dim=MLP,
      num_decoder_blocks=LAYERS, vocab_size=VOCAB, activation_fn="gelu_exact",
      rope_subset_size=4, rope_wavelength=10_000, layernorm_epsilon=1e-5,
      parameter_dtype=jnp.float32, activation_dtype=jnp.float32,
  )
  return gpt_neox.GPTNeoXTransformerConfig(**{**config, **changes})


class _StandInHFModel:
  """What penzai's loader reads of a ``transformers`` model: its config, dtype
  and ``state_dict()`` (here zeros of Llama's checkpoint shapes, ``[out, in]``)."""

  def __init__(self, kv_heads):
    self.dtype = "torch.float32"
    self.config = types.SimpleNamespace(
        num_key_value_heads=kv_heads, num_attention_heads=HEADS, hidden_size=D,
        intermediate_size=MLP, num_hidden_layers=LAYERS, vocab_size=VOCAB,
        rope_theta=10_000.0, rms_norm_eps=1e-6, sliding_window=None,
    )
    shapes = {"model.embed_tokens.weight": (VOCAB, D), "model.norm.weight": (D,),
              "lm_head.weight": (VOCAB, D)}
    for i in range(LAYERS):
      p = f"model.layers.{i}."
      shapes.update({
          p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,),
          p + "mlp.gate_proj.weight": (MLP, D), p + "mlp.up_proj.weight": (MLP, D),
          p + "mlp.down_proj.weight": (D, MLP), p + "self_attn.q_proj.weight": (HEADS * HD, D),
          p + "self_attn.k_proj.weight": (kv_heads * HD, D),
          p + "self_attn.v_proj.weight": (kv_heads * HD, D),
          p + "self_attn.o_proj.weight": (D, HEADS * HD),
      })
    self._state = {k: np.zeros(s, np.float32) for k, s in shapes.items()}

  def state_dict(self):
    return self._state


MODELS = {
    "llama GQA": lambda: llamalike.build_llamalike_transformer(llama_config(), jax.random.key(0)),
    "llama GQA, layer stack": lambda: llamalike.build_llamalike_transformer(
        llama_config(use_layer_stack=True), jax.random.key(0)),
    "gemma-like MQA, tied": lambda: llamalike.build_llamalike_transformer(
        llama_config(num_kv_heads=1, query_head_multiplier=HEADS, mlp_variant="geglu_approx",
                     tie_embedder_and_logits=True), jax.random.key(0)),
    "gpt-neox, biases": lambda: gpt_neox.build_gpt_neox_transformer(neox_config(), jax.random.key(0)),
    "gpt-neox, layer stack": lambda: gpt_neox.build_gpt_neox_transformer(
        neox_config(use_layer_stack=True), jax.random.key(0)),
    "llama GQA from HF": lambda: llamalike.llamalike_from_huggingface_model(_StandInHFModel(KV)),
    "llama MHA from HF, layer stack": lambda: llamalike.llamalike_from_huggingface_model(
        _StandInHFModel(HEADS), use_layer_stack=True),
}


def params_of(model):
  """What ``basic_training.StatefulTrainer.build`` passes to ``optimizer.init``."""
  return pz.freeze_params(pz.unbind_params(model)[1])


def intended_kept(label, names):
  """The axis names Adam-mini keeps (one v per entry of them), by what penzai's
  layer code does with each parameter (llamalike_common.py, gpt_neox.py)."""
  kept = {"blocks"} & set(names)  # a LayerStack's layer axis
  if label.endswith(".bias"):
    return set(names)  # AddBias: plain Adam
  if label.endswith("embedder.embeddings"):
    return kept | {"vocabulary"}  # one v per token
  if "norm/scale" in label:
    return kept  # one v per norm (per layer)
  if "lm_head" in label:
    return kept | {"vocabulary"}  # one v per output token
  if "/attention/query" in label or "/attention/key" in label:
    return kept | (set(names) & HEAD_AXES)  # one v per (query or kv) head
  if "/attention/value" in label:
    return kept | (set(names) - {"embedding"})  # one v per output neuron
  if "/attention/output" in label or "out_linear" in label or "mlp/out" in label:
    return kept | {"embedding"}
  if "gating_linear" in label or "value_linear" in label or "mlp/in" in label:
    return kept | {"neurons"}
  raise KeyError(label)


def v_count(name):
  """Number of v values from the config, by counting blocks per layer."""
  heads_kv = 1 if "MQA" in name else HEADS if ("MHA" in name or "neox" in name) else KV
  if "neox" in name:
    # q, k per head; v per neuron; out, mlp in/out per neuron; 2 layer norms
    # (scale one block, shift per element); every Affine's bias per element.
    per_layer = HEADS + HEADS + HEADS * HD + D + MLP + D + 2 * (1 + D)
    per_layer += 3 * HEADS * HD + D + MLP + D
    return LAYERS * per_layer + VOCAB + (1 + D) + VOCAB
  per_layer = HEADS + heads_kv + heads_kv * HD + D + 2 * MLP + D + 2
  tied = "tied" in name
  return LAYERS * per_layer + VOCAB + 1 + (0 if tied else VOCAB)


def data_names(value):
  return tuple(value.named_shape)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_leaf_gets_the_blocks_its_layer_means(name):
  model = MODELS[name]()
  params = params_of(model)
  blocks = optax_mini.penzai_blocks(model)
  specs = jax.tree_util.tree_leaves(
      optax_mini.block_specs(params, blocks=blocks),
      is_leaf=lambda x: isinstance(x, optax_mini.BlockSpec))
  assert len(specs) == len(params)
  for pv, spec in zip(params, specs):
    names = data_names(pv.value)
    shape = tuple(pv.value.data_array.shape)
    assert shape == tuple(pv.value.named_shape[n] for n in names)
    layout = spec.layout(shape)
    kept = {names[a] for a in layout.v_axes}
    assert kept == intended_kept(pv.label, names), (pv.label, names, spec)
    # The kept axes keep their whole length (no split heads here).
    assert layout.num_blocks == math.prod(pv.value.named_shape[n] for n in kept), pv.label
  report = optax_mini.explain(params, blocks=blocks)
  assert report.num_v == v_count(name)
  assert [r.path for r in report.rows] == [f"[{pv.label!r}]" for pv in params]


def test_the_same_model_loaded_transposed_gets_the_same_blocks():
  fresh = optax_mini.explain(params_of(MODELS["llama GQA"]()),
                             blocks=optax_mini.penzai_blocks(MODELS["llama GQA"]()))
  loaded_model = MODELS["llama GQA from HF"]()
  loaded_params = params_of(loaded_model)
  loaded = optax_mini.explain(loaded_params, blocks=optax_mini.penzai_blocks(loaded_model))
  # Another axis order, the same blocks per label.
  assert [r.shape for r in fresh.rows] != [r.shape for r in loaded.rows]
  assert {r.path: r.num_blocks for r in fresh.rows} == {r.path: r.num_blocks for r in loaded.rows}


@pytest.mark.parametrize("blocks", [None, optax_mini.BlockRules(num_heads=HEADS, num_kv_heads=KV)],
                         ids=["default", "head counts"])
@pytest.mark.parametrize("form", ["freeze_params", "label dict"])
def test_without_the_model_a_penzai_tree_raises(blocks, form):
  # Before penzai_blocks, the head counts made this tree train with its
  # embedding averaged per column and its query heads averaged together.
  params = params_of(MODELS["llama GQA"]())
  tree = params if form == "freeze_params" else {p.label: p.value for p in params}
  with pytest.raises(ValueError, match=r"penzai NamedArray.*penzai_blocks\(model\)"):
    optax_mini.adam_mini(1e-3, head_dim=HD, blocks=blocks).init(tree)


def test_label_dict_reads_as_freeze_params():
  model = MODELS["gpt-neox, layer stack"]()
  params = params_of(model)
  blocks = optax_mini.penzai_blocks(model)
  as_tuple = optax_mini.explain(params, blocks=blocks)
  as_dict = optax_mini.explain({p.label: p.value for p in params}, blocks=blocks)
  assert sorted((r.path, r.v_shape) for r in as_tuple.rows) == sorted(
      (r.path, r.v_shape) for r in as_dict.rows)


def test_weight_decay_skips_biases_norms_and_layer_axes():
  model = MODELS["gpt-neox, layer stack"]()
  params = params_of(model)
  report = optax_mini.explain(params, blocks=optax_mini.penzai_blocks(model))
  for pv, row in zip(params, report.rows):
    matrix = len([n for n in data_names(pv.value) if n != "blocks"]) >= 2
    assert row.decayed == (matrix and not pv.label.endswith(".bias")), pv.label


def numpy_adam_mini(params, grads_per_step):
  """float64 Adam-mini, each leaf averaged over the axes its layer does not
  keep (by name); decay on matrices that are not biases (the default mask)."""
  p = {pv.label: np.asarray(pv.value.data_array, np.float64) for pv in params}
  names = {pv.label: data_names(pv.value) for pv in params}
  m = {k: np.zeros_like(x) for k, x in p.items()}
  v = {k: 0.0 for k in p}
  for t, grads in enumerate(grads_per_step, start=1):
    for k in p:
      g = grads[k]
      kept = intended_kept(k, names[k])
      axes = tuple(a for a, n in enumerate(names[k]) if n not in kept)
      v[k] = B2 * v[k] + (1 - B2) * np.mean(g * g, axis=axes, keepdims=True)
      m[k] = B1 * m[k] + (1 - B1) * g
      if len([n for n in names[k] if n != "blocks"]) >= 2 and not k.endswith(".bias"):
        p[k] = p[k] * (1 - LR * WD)
      p[k] = p[k] - LR * (m[k] / (1 - B1**t)) / (np.sqrt(v[k] / (1 - B2**t)) + EPS)
  return p


@pytest.mark.parametrize("name", ["llama GQA from HF", "gpt-neox, layer stack"])
def test_three_steps_match_a_float64_reference(name):
  model = MODELS[name]()
  params = params_of(model)
  rng = np.random.default_rng(0)
  # Random parameters (the loaded ones are zeros), gradients with a scale per
  # entry of every axis, so that averaging the wrong axes shows.
  params = tuple(
      pv.__class__(label=pv.label, value=pv.value.__class__(
          named_axes=pv.value.named_axes,
          data_array=jnp.asarray(rng.normal(size=pv.value.data_array.shape), jnp.float32)),
          metadata=pv.metadata)
      for pv in params)
  grads_per_step = []
  for _ in range(3):
    step = {}
    for pv in params:
      shape = pv.value.data_array.shape
      scale = np.ones(shape)
      for a, n in enumerate(shape):
        scale = scale * rng.uniform(0.2, 3.0, size=n).reshape([-1 if i == a else 1 for i in range(len(shape))])
      step[pv.label] = (rng.normal(size=shape) * scale).astype(np.float32).astype(np.float64)
    grads_per_step.append(step)
  tx = optax_mini.adam_mini(LR, b1=B1, b2=B2, eps=EPS, weight_decay=WD,
                            blocks=optax_mini.penzai_blocks(model))
  state = tx.init(params)

  @jax.jit
  def update(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  ours = params
  for step in grads_per_step:
    grads = tuple(
        pv.__class__(label=pv.label, value=pv.value.__class__(
            named_axes=pv.value.named_axes, data_array=jnp.asarray(step[pv.label], jnp.float32)),
            metadata=pv.metadata)
        for pv in params)
    ours, state = update(ours, state, grads)
  reference = numpy_adam_mini(params, grads_per_step)
  for pv in ours:
    np.testing.assert_allclose(np.asarray(pv.value.data_array), reference[pv.label],
                               rtol=2e-5, atol=2e-6, err_msg=pv.label)


@pytest.mark.parametrize("mu_dtype", [None, jnp.int8], ids=["float32 m", "int8 m"])
def test_penzais_own_trainer_trains_with_named_state(mu_dtype):
  model = MODELS["llama GQA, layer stack"]()
  tokens = pz.nx.wrap(
      jax.random.randint(jax.random.key(1), (4, 16), 0, VOCAB)).tag("batch", "seq")

  def loss_fn(model, state, rng, tokens):
    del rng
    logits = model(tokens).unwrap("batch", "seq", "vocabulary")[:, :-1]
    targets = tokens.unwrap("batch", "seq")[:, 1:]
    loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1))
    return loss, state, {"loss": loss}

  trainer = basic_training.StatefulTrainer.build(
      root_rng=jax.random.key(0), model=model, loss_fn=loss_fn,
      optimizer_def=optax_mini.adam_mini(3e-3, blocks=optax_mini.penzai_blocks(model),
                                         mu_dtype=mu_dtype))
  losses = [float(trainer.step(tokens=tokens)["loss"]) for _ in range(8)]
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]
  state = trainer.state.value.opt_state
  nu = next(s.nu for s in jax.tree_util.tree_leaves(
      state, is_leaf=lambda x: isinstance(x, optax_mini.ScaleByAdamMiniState))
      if isinstance(s, optax_mini.ScaleByAdamMiniState))
  param_names = {pv.label: data_names(pv.value) for pv in params_of(model)}
  assert [pv.label for pv in nu] == list(param_names)
  for pv in nu:
    names = data_names(pv.value)
    # v is named by the axes it keeps, with its own sizes.
    assert set(names) == intended_kept(pv.label, param_names[pv.label]), pv.label
    assert pv.value.data_array.shape == tuple(pv.value.named_shape[n] for n in names)


def test_a_subset_of_the_parameters_draws_no_warning():
  model = MODELS["llama GQA"]()
  params = params_of(model)
  trainable = tuple(pv for pv in params if "embedder" not in pv.label)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    state = optax_mini.adam_mini(1e-3, blocks=optax_mini.penzai_blocks(model)).init(trainable)
  assert len(state[0].nu) == len(trainable)


def test_an_unbound_model_and_an_unknown_layer_raise():
  model = MODELS["llama GQA"]()
  unbound, params = pz.unbind_params(model)
  with pytest.raises(ValueError, match="bound"):
    optax_mini.penzai_blocks(unbound)
  # A 2-D parameter no penzai layer the walk knows owns: it must be given a rule.
  extra = pz.ParameterValue(label="adapter.weights", value=pz.nx.wrap(
      jnp.zeros((8, D))).tag("rank", "embedding"))
  frozen = pz.freeze_params(params) + (extra,)
  blocks = optax_mini.penzai_blocks(model)
  with pytest.raises(ValueError, match=r"\['adapter\.weights'\].*penzai NamedArray") as raised:
    optax_mini.adam_mini(1e-3, blocks=blocks).init(frozen)
  # Its example layout names the axes to give letters to: no concrete layout
  # (copied, an "i i o" averaged a query's heads).
  assert "layout='<a letter for each of rank, embedding>'" in str(raised.value)
  with_rule = optax_mini.penzai_blocks(
      model, rules=[optax_mini.Rule("adapter/weights", "neuron", layout="o i")])
  report = optax_mini.explain(frozen, blocks=with_rule)
  assert report.rows[-1].v_shape == (8,)


@pytest.mark.parametrize("name", ["llama GQA", "llama GQA, layer stack", "gemma-like MQA, tied"])
def test_lora_factors_get_one_v_per_output_neuron(name):
  """penzai.toolshed.lora puts a LowRankAdapter (LoRA_A: the Linear's inputs
  to the rank, LoRA_B: the rank to its outputs) beside every Linear it
  adapts. Under a query or key, B's outputs are the heads and a head's size:
  it was read as a query kernel (one v per head, the head sizes averaged;
  Gemma's one key head one v per layer). Each factor keeps every axis but its
  inputs (and a LayerStack's layer axis)."""
  from penzai.toolshed import lora  # noqa: PLC0415

  frozen = pz.freeze_params(MODELS[name]())
  selection = pz.select(frozen).at_instances_of(pz.nn.Linear).where(lambda lin: bool(lin.in_axis_names))
  model = lora.loraify_linears_in_selection(selection, rank=3, init_base_rng=jax.random.key(3))
  linears = {lin.weights.label: lin for lin in pz.select(model).at_instances_of(pz.nn.Linear).get_sequence()
             if hasattr(lin.weights, "label")}
  params = tuple(pv for pv in params_of(model) if "LoRA_" in pv.label)
  specs = jax.tree_util.tree_leaves(
      optax_mini.block_specs(params, blocks=optax_mini.penzai_blocks(model)),
      is_leaf=lambda x: isinstance(x, optax_mini.BlockSpec))
  queries = 0
  for pv, spec in zip(params, specs):
    names = data_names(pv.value)
    kept = {names[a] for a in spec.layout(tuple(pv.value.data_array.shape)).v_axes}
    assert kept == set(names) - set(linears[pv.label].in_axis_names), (pv.label, names, kept)
    queries += "query" in pv.label and pv.label.endswith("LoRA_B.weights")
  assert queries == LAYERS if "stack" not in name else queries == 1
