"""keras-hub backbones built live from small configs (shapes from keras-hub's
own layers, on the JAX backend): each kernel's blocks against counts from the
config. These are the layouts keras-hub keeps beside its recorded trees
(tests/third_party/trees/keras_hub_*.json): EinsumDense q/k/v under other
names, experts stored as [experts, in, out] weights, XLNet's output
projection stored [out, heads, head_dim], a depthwise short convolution."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

import optax_mini

D, HEADS, HEAD, MLP, EXPERTS, VOCAB = 64, 4, 16, 128, 4, 100

# name -> (backbone kwargs, what the user passes, {path suffix: blocks per layer})
CASES = {
    "BloomBackbone": (
        dict(num_heads=HEADS),
        {},
        {"self_attention/query_dense/kernel": HEADS, "self_attention/key_dense/kernel": HEADS,
         "self_attention/value_dense/kernel": D, "self_attention/output_dense/kernel": D},
    ),
    "FalconBackbone": (
        dict(num_attention_heads=HEADS),
        {},
        {"attention/query_dense/kernel": HEADS, "attention/key_dense/kernel": HEADS,
         "attention/value_dense/kernel": D, "dense_h_to_4h/kernel": MLP},
    ),
    "XLNetBackbone": (
        dict(num_heads=HEADS),
        {},
        {"rel_attn/query/kernel": HEADS, "rel_attn/key/kernel": HEADS,
         "rel_attn/encoding/kernel": HEADS, "rel_attn/value/kernel": D,
         # "ibnd,hnd->ibh": [out, heads, head_dim], one v per output neuron.
         "rel_attn/attention_output/kernel": D,
         "segment_encoding": 2 * HEADS},
    ),
    "MixtralBackbone": (
        dict(num_query_heads=HEADS, num_key_value_heads=2, num_experts=EXPERTS, top_k=2),
        {},
        {"experts/expert_feedforward_gate_dense": EXPERTS * MLP,
         "experts/expert_feedforward_intermediate_dense": EXPERTS * MLP,
         "experts/expert_feedforward_output_dense": EXPERTS * D,
         "sparse_feedforward_gate_dense/kernel": EXPERTS,
         "self_attention/key/kernel": 2},
    ),
    "GptOssBackbone": (
        dict(num_query_heads=HEADS, num_key_value_heads=2, head_dim=HEAD, num_experts=EXPERTS,
             top_k=2),
        {},
        {"experts/gate_up_proj": EXPERTS * 2 * MLP, "experts/down_proj": EXPERTS * D},
    ),
    "GPTNeoXBackbone": (
        dict(num_heads=HEADS, max_sequence_length=64),
        {"head_dim": HEAD},
        # [in, heads, 3 * head_dim]: q and k per head, v per output neuron.
        {"self_attention/query_key_value/kernel": HEADS + HEADS + D},
    ),
    "BartBackbone": (
        dict(num_heads=HEADS, max_sequence_length=64),
        {},
        {"cross_attention/query/kernel": HEADS, "cross_attention/key/kernel": HEADS,
         "cross_attention/value/kernel": D, "cross_attention/attention_output/kernel": D},
    ),
    "Qwen3_5Backbone": (
        dict(num_query_heads=HEADS, num_key_value_heads=2, head_dim=HEAD, linear_num_key_heads=2,
             linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=16,
             linear_conv_kernel_dim=4),
        {},
        # The depthwise short convolution [channels, k]: one v per channel,
        # channels = q and k (2 heads of 8 each) and v (4 heads of 16).
        {"linear_attn/conv1d_kernel": 2 * 2 * 8 + 4 * 16},
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


@pytest.mark.parametrize("name", sorted(CASES))
def test_keras_hub_backbone_blocks(keras_hub, name):
  kwargs, passes, want = CASES[name]
  backbone = getattr(keras_hub.models, name)(
      vocabulary_size=VOCAB, num_layers=1, hidden_dim=D, intermediate_dim=MLP, **kwargs)
  tree = {v.path: jnp.zeros(v.shape, jnp.float32) for v in backbone.trainable_variables}
  assert len(tree) == len(backbone.trainable_variables)
  report = optax_mini.explain(tree, **passes)
  got = {}
  for row in report.rows:
    path = row.path.strip("[]'")
    for suffix in want:
      if path.endswith(suffix):
        got[suffix] = row.num_blocks
  assert got == want
