"""keras-hub backbones built live from small configs (shapes from keras-hub's
own layers, on the JAX backend): each kernel's blocks against counts from the
config. These are the layouts keras-hub keeps beside its recorded trees
(tests/third_party/trees/keras_hub_*.json): EinsumDense q/k/v under other
names, experts stored as [experts, in, out] weights, XLNet's output
projection stored [out, heads, head_dim], depthwise and 1x1 convolutions,
probes and pooling queries."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import optax_mini

D, HEADS, HEAD, MLP, EXPERTS, VOCAB = 64, 4, 16, 128, 4, 100


def _decoder(name, **kwargs):
  def build(models):
    return getattr(models, name)(
        **{"vocabulary_size": VOCAB, "num_layers": 1, "hidden_dim": D, "intermediate_dim": MLP, **kwargs})
  return build


def _two_towers(kind, vision_dim, vision_heads, **backbone):
  """SigLIP's or CLIP's backbone: a vision tower of ``vision_heads`` heads of
  8, a text tower of 4 heads of 8."""
  def build(models):
    vision = getattr(models, f"{kind}VisionEncoder")(
        patch_size=4, hidden_dim=vision_dim, num_layers=1, num_heads=vision_heads,
        intermediate_dim=64, image_shape=(16, 16, 3))
    text = getattr(models, f"{kind}TextEncoder")(
        vocabulary_size=50, embedding_dim=32, hidden_dim=32, num_layers=1, num_heads=4,
        intermediate_dim=64, max_sequence_length=8)
    return getattr(models, f"{kind}Backbone")(vision, text, **backbone)
  return build


def _mobilenet_v5(models):
  from keras_hub.src.models.mobilenetv5.mobilenetv5_builder import convert_arch_def_to_stackwise

  # One inverted-residual stage, then multi-query attention: 4 query heads of
  # 8 (key_dim), one key/value head, value_dim 8, key/value downsampled 2x by
  # depthwise convolutions; 32 channels.
  arch = [["er_r1_k3_s2_e4_c16"], ["uir_r1_a3_k5_s2_e2_c32", "mqa_r1_k3_h4_v2_s1_d8_c32"]]
  return models.MobileNetV5Backbone(
      **convert_arch_def_to_stackwise(arch), num_features=32, image_shape=(64, 64, 3),
      use_msfa=False)


# CLIP with towers of different head counts: 6 heads of 8 (vision), 4 (text).
_clip = _two_towers("CLIP", vision_dim=48, vision_heads=6, projection_dim=24)


# A user's rules for CLIP's [in, heads, head_dim] attention (its out kernels
# settle it without them; the rules must agree, and leave the biases alone).
_IN_HEADS_RULES = optax_mini.BlockRules(rules=[
    optax_mini.Rule("attention/query", "heads", "i n h"),
    optax_mini.Rule("attention/key", "heads", "i n h"),
    optax_mini.Rule("attention/value", "value", "i n h"),
])

# name -> (build(keras_hub.models), what the user passes, {path suffix: blocks per leaf
# (a set: the blocks of each leaf that path ends)})
CASES = {
    "Bloom": (
        _decoder("BloomBackbone", num_heads=HEADS),
        {},
        {"self_attention/query_dense/kernel": HEADS, "self_attention/key_dense/kernel": HEADS,
         "self_attention/value_dense/kernel": D, "self_attention/output_dense/kernel": D},
    ),
    "Falcon": (
        _decoder("FalconBackbone", num_attention_heads=HEADS),
        {},
        {"attention/query_dense/kernel": HEADS, "attention/key_dense/kernel": HEADS,
         "attention/value_dense/kernel": D, "dense_h_to_4h/kernel": MLP},
    ),
    "XLNet": (
        _decoder("XLNetBackbone", num_heads=HEADS),
        {},
        {"rel_attn/query/kernel": HEADS, "rel_attn/key/kernel": HEADS,
         "rel_attn/encoding/kernel": HEADS, "rel_attn/value/kernel": D,
         # "ibnd,hnd->ibh": [out, heads, head_dim], one v per output neuron.
         "rel_attn/attention_output/kernel": D,
         "segment_encoding": 2 * HEADS},
    ),
    "Mixtral": (
        _decoder("MixtralBackbone", num_query_heads=HEADS, num_key_value_heads=2,
                 num_experts=EXPERTS, top_k=2),
        {},
        {"experts/expert_feedforward_gate_dense": EXPERTS * MLP,
         "experts/expert_feedforward_intermediate_dense": EXPERTS * MLP,
         "experts/expert_feedforward_output_dense": EXPERTS * D,
         "sparse_feedforward_gate_dense/kernel": EXPERTS,
         "self_attention/key/kernel": 2},
    ),
    "Phi3": (
        _decoder("Phi3Backbone", num_query_heads=HEADS, num_key_value_heads=2),
        {},
        # attention/{query,key,value} [in, heads, head_dim] beside
        # attention_output [heads, head_dim, out]: no head counts needed.
        {"attention/query/kernel": HEADS, "attention/key/kernel": 2,
         "attention/value/kernel": 2 * HEAD},
    ),
    "GptOss": (
        _decoder("GptOssBackbone", num_query_heads=HEADS, num_key_value_heads=2, head_dim=HEAD,
                 num_experts=EXPERTS, top_k=2),
        {},
        {"experts/gate_up_proj": EXPERTS * 2 * MLP, "experts/down_proj": EXPERTS * D},
    ),
    "GPTNeoX": (
        _decoder("GPTNeoXBackbone", num_heads=HEADS, max_sequence_length=64),
        {"head_dim": HEAD},
        # [in, heads, 3 * head_dim]: q and k per head, v per output neuron.
        {"self_attention/query_key_value/kernel": HEADS + HEADS + D},
    ),
    "Bart": (
        _decoder("BartBackbone", num_heads=HEADS, max_sequence_length=64),
        {},
        {"cross_attention/query/kernel": HEADS, "cross_attention/key/kernel": HEADS,
         "cross_attention/value/kernel": D, "cross_attention/attention_output/kernel": D},
    ),
    "Qwen3_5": (
        # Four layers: three gated-DeltaNet ones, then a full-attention one.
        _decoder("Qwen3_5Backbone", num_layers=4, num_query_heads=HEADS, num_key_value_heads=2, head_dim=HEAD,
                 linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
                 linear_value_head_dim=16, linear_conv_kernel_dim=4),
        {},
        # The depthwise short convolution [channels, k]: one v per channel,
        # channels = q and k (2 heads of 8 each) and v (4 heads of 16). The
        # full-attention query [in, heads, 2 * head_dim] holds each head's
        # query (one v per head) and output gate (one per neuron).
        {"linear_attn/conv1d_kernel": 2 * 2 * 8 + 4 * 16,
         "self_attention/query/kernel": HEADS + HEADS * HEAD},
    ),
    "RoformerV2": (
        _decoder("RoformerV2Backbone", num_heads=HEADS, head_size=HEAD),
        {"head_dim": HEAD},
        {"q_dense_layer/kernel": HEADS, "k_dense_layer/kernel": HEADS},
    ),
    "ESM2": (
        _decoder("ESM2Backbone", num_heads=HEADS, max_sequence_length=64),
        {"head_dim": D // HEADS},
        {"q_dense_layer/kernel": HEADS, "k_dense_layer/kernel": HEADS},
    ),
    "T5": (
        _decoder("T5Backbone", num_heads=HEADS, key_value_dim=HEAD, tie_embedding_weights=False),
        {"head_dim": HEAD},
        {"query_projector/kernel": HEADS, "key_projector/kernel": HEADS,
         "value_projector/kernel": HEADS * HEAD},
    ),
    "RWKV7": (
        lambda models: models.RWKV7Backbone(
            hidden_size=D, head_size=HEAD, num_layers=1, vocabulary_size=VOCAB,
            intermediate_dim=MLP, gate_lora=8, mv_lora=8, aaa_lora=8, decay_lora=8),
        {"head_dim": HEAD},
        # receptance is RWKV's query; r_k a per-head bonus [heads, head_size].
        {"receptance/kernel": D // HEAD, "rwkv_time_mix/key/kernel": D // HEAD,
         "r_k": D // HEAD},
    ),
    "DINOV2": (
        lambda models: models.DINOV2Backbone(
            patch_size=4, num_layers=1, hidden_dim=D, num_heads=HEADS, intermediate_dim=MLP,
            image_shape=(16, 16, 3), position_embedding_shape=(16, 16, 3)),
        {},
        {"attention/attention/query/kernel": HEADS, "attention/attention/key/kernel": HEADS,
         "attention/attention/value/kernel": D},
    ),
    "SigLIP": (
        _two_towers("SigLIP", vision_dim=32, vision_heads=4),
        {},
        # The attention-pooling probe [1, 1, dim]: one query, one v.
        {"head/variable": 1, "self_attn/query/kernel": 4, "self_attn/key/kernel": 4,
         "self_attn/value/kernel": 32, "head/attention/query/kernel": 4,
         "head/attention/value/kernel": 32},
    ),
    "CLIP": (
        _clip,
        {},
        # Each tower's own: {vision's, text's}.
        {"encoder_block_0/attention/query/kernel": {6, 4},
         "encoder_block_0/attention/key/kernel": {6, 4},
         "encoder_block_0/attention/value/kernel": {48, 32},
         "encoder_block_0/attention/attention_output/kernel": {48, 32}},
    ),
    "CLIP, the user's rules": (
        _clip,
        {"blocks": _IN_HEADS_RULES},
        {"encoder_block_0/attention/query/kernel": {6, 4},
         "encoder_block_0/attention/value/kernel": {48, 32},
         # The rules name modules: their [heads, head_dim] biases stay plain Adam.
         "encoder_block_0/attention/query/bias": {6 * 8, 4 * 8}},
    ),
    "MobileNetV5": (
        _mobilenet_v5,
        {"head_dim": 8},
        # 1x1 convolutions [1, 1, in, out]: query 4 heads, the multi-query key
        # one; value one v per output channel (value_dim 8); the depthwise
        # downsampling convolutions [3, 3, 32, 1] one per channel.
        {"attn/query_proj/kernel": 4, "attn/key_proj/kernel": 1, "attn/value_proj/kernel": 8,
         "attn/key_down_conv/kernel": 32, "attn/value_down_conv/kernel": 32},
    ),
}


@pytest.fixture
def keras_hub(monkeypatch):
  monkeypatch.setenv("KERAS_BACKEND", "jax")
  keras = pytest.importorskip(
      "keras", reason="keras is not installed (.ci/run installs keras-hub on the JAX backend)")
  if keras.backend.backend() != "jax":
    pytest.skip(f"keras was imported on the {keras.backend.backend()} backend before this test")
  return pytest.importorskip(
      "keras_hub", reason="keras-hub is not installed (see tests/third_party/record_keras_hub.py)")


def _tree(model) -> dict:
  """The README's recipe: variables keyed by path, or by top-level layer and
  path where two share a path (two towers; T5's encoder and decoder)."""
  variables = model.trainable_variables
  tree = {v.path: jnp.zeros(v.shape, jnp.float32) for v in variables}
  if len(tree) < len(variables):
    tree = {f"{layer.name}/{v.path}": jnp.zeros(v.shape, jnp.float32)
            for layer in model.layers for v in layer.trainable_variables}
  assert len(tree) == len(variables)
  return tree


# keras-hub's T5 layers warn that they drop a mask when the backbone is built.
@pytest.mark.filterwarnings("ignore:Layer .* does not support masking:UserWarning")
# RWKV-7 asks for its CUDA kernels (rwkv_ops) when built; shapes need none.
@pytest.mark.filterwarnings("ignore:The .rwkv_ops. package is not installed:UserWarning")
@pytest.mark.parametrize("name", sorted(CASES))
def test_keras_hub_backbone_blocks(keras_hub, name):
  build, passes, want = CASES[name]
  report = optax_mini.explain(_tree(build(keras_hub.models)), **passes)
  got: dict[str, set[int]] = {}
  for row in report.rows:
    path = row.path.strip("[]'").lower()
    for suffix in want:
      if path.endswith(suffix.lower()):
        got.setdefault(suffix, set()).add(row.num_blocks)
  assert got == {suffix: blocks if isinstance(blocks, set) else {blocks}
                 for suffix, blocks in want.items()}


@pytest.mark.parametrize("name", ["GemmaBackbone", "LlamaBackbone"])
def test_lora_fine_tuning_keeps_each_heads_factors_apart(keras_hub, name):
  """keras-hub's LoRA recipe, backbone.enable_lora(rank), on the JAX
  backend: the trainable variables are then the query's and value's
  lora_kernel_a (the kernel with its last axis the rank: Gemma's [heads, D,
  r], Llama's [D, heads, r]) and lora_kernel_b [r, head_dim]. Through
  stateless_call, v after one step (b2 = 0) against float64 NumPy of the
  real gradients: A averaged over its input only (one v per head and rank
  direction), B over the rank (one per output); then a step of adam_mini
  is finite."""
  import jax  # noqa: PLC0415

  kwargs = {"vocabulary_size": VOCAB, "num_layers": 1, "num_query_heads": HEADS, "num_key_value_heads": 2,
            "hidden_dim": D, "intermediate_dim": MLP}
  backbone = getattr(keras_hub.models, name)(**kwargs, **({"head_dim": HEAD} if name == "GemmaBackbone" else {}))
  backbone.enable_lora(rank=3)
  paths = [v.path for v in backbone.trainable_variables]
  assert paths and all(p.endswith(("lora_kernel_a", "lora_kernel_b")) for p in paths)
  keys = jax.random.split(jax.random.key(0), len(paths))
  # B starts at zero (so would A's gradient): random factors, as after some steps.
  trainable = [0.1 * jax.random.normal(k, v.shape) for k, v in zip(keys, backbone.trainable_variables)]
  frozen = [v.value for v in backbone.non_trainable_variables]
  inputs = {"token_ids": jax.random.randint(jax.random.key(1), (2, 8), 0, VOCAB),
            "padding_mask": jnp.ones((2, 8), "int32")}

  def loss(trainable):
    out, _ = backbone.stateless_call(trainable, frozen, inputs)
    return jnp.mean(out ** 2)

  grads = dict(zip(paths, jax.grad(loss)(trainable)))
  params = dict(zip(paths, trainable))
  tx = optax_mini.scale_by_adam_mini(b2=0.0)
  _, state = tx.update(grads, tx.init(params))
  for path, g in grads.items():
    g = np.asarray(g, np.float64)
    averaged = (g.shape.index(D),) if path.endswith("lora_kernel_a") else (0,)
    np.testing.assert_allclose(state.nu[path], np.mean(g ** 2, axis=averaged), rtol=1e-5, err_msg=path)
  tx = optax_mini.adam_mini(1e-3)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert all(np.isfinite(np.asarray(u)).all() for u in updates.values())
