"""Recorded parameter trees of the libraries people train with.

Each fixture in ``third_party/trees`` is a real library's own tree (paths and
shapes from its init, recorded by ``third_party/record_<library>.py``). The
expected number of Adam-mini blocks of every leaf is computed here from the
model's config and the official rules (one v per head for q/k, per token for
embeddings and an untied output, per output neuron for value / attention-out
/ MLP, per tensor for norms, per element for biases), independently of
optax_mini, and compared leaf by leaf with what ``optax_mini.explain`` reports
for the tree given nothing but ``head_dim`` (and the layer axis of scanned
trees).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import json
import math
import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import pytest

import optax_mini

HERE = pathlib.Path(__file__).parent / "third_party"
FIXTURES = sorted((HERE / "trees").glob("*.json"))


def _component(key) -> str:
  """A key path entry as the fixtures spell it (DictKey, SequenceKey, GetAttrKey, FlattenedIndexKey)."""
  return str(getattr(key, "key", getattr(key, "idx", getattr(key, "name", key))))


def load(path: pathlib.Path) -> dict:
  return json.loads(path.read_text())


def rebuild(record: dict) -> dict:
  if "stacked_modules" in record:
    return rebuild_haliax(record)
  tree: dict = {}
  for leaf in record["leaves"]:
    node = tree
    *parents, last = leaf["path"]
    for key in parents:
      node = node.setdefault(key, {})
    node[last] = jax.ShapeDtypeStruct(tuple(leaf["shape"]), jnp.dtype(leaf["dtype"]))
  return tree


def rebuild_haliax(record: dict):
  """A recorded Levanter tree with haliax's own classes: ``NamedArray`` s
  with the recorded axis names, each module weight in an ``hnn.Linear`` /
  ``hnn.MoELinear`` with its recorded ``In``/``Out`` (the library reads
  those), each layer stack in an ``hnn.Stacked``; plain dicts in between."""
  hax = pytest.importorskip(
      "haliax", reason="haliax is not installed (pip install haliax==1.4.dev453; in the test extra)"
  )
  hnn = hax.nn
  sizes = {n: d for leaf in record["leaves"] for n, d in zip(leaf["axes"], leaf["shape"])}

  def named(names):
    return tuple(hax.Axis(n, sizes[n]) for n in names)

  def axes(names):  # a module's In/Out: one Axis, or a tuple of them
    out = named(names)
    return out[0] if len(out) == 1 else out

  def at(path):
    node = tree
    for key in path:
      node = node.setdefault(key, {})
    return node

  tree: dict = {}
  for leaf in record["leaves"]:
    *where, name, index = leaf["path"]
    assert index == 0, leaf["path"]  # a NamedArray's array
    array = jax.ShapeDtypeStruct(tuple(leaf["shape"]), jnp.dtype(leaf["dtype"]))
    at(where)[name] = hax.NamedArray(array, named(leaf["axes"]))
  for leaf in record["leaves"]:
    module = leaf.get("module")
    if module is None:
      continue
    *parent, name = leaf["path"][:-2]
    fields = at(parent)[name]
    if module["class"] == "MoELinear":
      built = hnn.MoELinear(fields["weight"], fields.get("bias"), axes(module["Experts"]),
                            axes(module["In"]), axes(module["Out"]), use_gmm=False)
    else:
      built = hnn.Linear(fields["weight"], fields.get("bias"), axes(module["In"]), axes(module["Out"]))
    at(parent)[name] = built
  for stack in sorted(record["stacked_modules"], key=lambda s: -len(s["path"])):
    *parent, name = stack["path"]
    at(parent)[name] = hnn.Stacked(at(parent)[name]["stacked"], hax.Axis(*stack["block"]), False)
  return tree


# Per library: (glob over the '/'-joined path, blocks of ONE layer's leaf from
# the config). First match wins; every leaf must match one.
def _heads(c):
  return c["num_heads"]


def _kv_heads(c):
  return c["num_kv_heads"]


def _kv_neurons(c):
  return c["num_kv_heads"] * c["head_dim"]


def _d(c):
  return c["d_model"]


def _mlp(c):
  return c["mlp_dim"]


def _vocab(c):
  return c["vocab_size"]


def _one(c):
  return 1


def _positions(c):  # a learned position table: one v per position
  native = c["native"]
  return native["n_positions"] if "n_positions" in native else native["max_position_embeddings"]


def _patches(c):
  return (c["image_size"] // c["patch_size"]) ** 2


def _image_positions(c):  # a ViT's: one per patch, and the class token's
  return _patches(c) + 1


def _tower(tower, field):  # a count from one tower's config
  return lambda c: c[tower][field]


def _openpi_lora(suffix, sizes, rank):
  """openpi's LoRA factors of one Gemma (``suffix``: the action expert's
  ``_1``), v per layer: A [.., in, r] one per leading axis and rank
  direction, B [.., r, out] one per output neuron of the adapted einsum."""
  def per(f):
    return lambda c: f(sizes(c), c["lora"][rank])
  mlp = "mlp" + suffix
  return [
      (f"*/attn/q_einsum{suffix}/lora_a", per(lambda s, r: s["num_heads"] * r)),
      (f"*/attn/q_einsum{suffix}/lora_b", per(lambda s, r: s["num_heads"] * s["head_dim"])),
      (f"*/attn/kv_einsum{suffix}/lora_a", per(lambda s, r: 2 * s["num_kv_heads"] * r)),
      (f"*/attn/kv_einsum{suffix}/lora_b", per(lambda s, r: 2 * s["num_kv_heads"] * s["head_dim"])),
      (f"*/attn/attn_vec_einsum{suffix}/lora_a", per(lambda s, r: r)),
      (f"*/attn/attn_vec_einsum{suffix}/lora_b", per(lambda s, r: s["d_model"])),
      (f"*/{mlp}/gating_einsum_lora_a", per(lambda s, r: 2 * r)),
      (f"*/{mlp}/gating_einsum_lora_b", per(lambda s, r: 2 * s["mlp_dim"])),
      (f"*/{mlp}/linear_lora_a", per(lambda s, r: r)),
      (f"*/{mlp}/linear_lora_b", per(lambda s, r: s["d_model"])),
  ]


def _experts(c):
  return c["num_experts"]


def _is_qwen3_next(c):
  return c.get("native", {}).get("model_type") == "qwen3_next"


def _hf_gdn(c):  # HF's Qwen3-Next config in MaxText's names (Qwen3.5's record)
  native = c["native"]
  return {**c, "gdn_num_key_heads": native["linear_num_key_heads"],
          "gdn_num_value_heads": native["linear_num_value_heads"],
          "gdn_key_head_dim": native["linear_key_head_dim"], "gdn_value_head_dim": native["linear_value_head_dim"],
          "gdn_conv_kernel_dim": native["linear_conv_kernel_dim"],
          "inhomogeneous_layer_cycle_interval": native["full_attention_interval"],
          "num_experts": native["num_experts"], "moe_mlp_dim": native["moe_intermediate_size"],
          "shared_experts": native["shared_expert_intermediate_size"] // native["moe_intermediate_size"]}


def _gdn_keys(c):  # a gated DeltaNet's query (or key) width
  return c["gdn_num_key_heads"] * c["gdn_key_head_dim"]


def _gdn_values(c):  # its value (or output gate) width
  return c["gdn_num_value_heads"] * c["gdn_value_head_dim"]


def _qkv(c):  # fused q|k|v: q and k per head, v per output neuron
  return c["num_heads"] + c["num_kv_heads"] + c["num_kv_heads"] * c["head_dim"]


EXPECTED = {
    "transformers": [
        ("*embed_tokens/embedding", _vocab), ("*lm_head/kernel", _vocab),
        ("*q_proj/kernel", _heads), ("*k_proj/kernel", _kv_heads), ("*v_proj/kernel", _kv_neurons),
        ("*o_proj/kernel", _d), ("*gate_proj/kernel", _mlp), ("*up_proj/kernel", _mlp),
        ("*down_proj/kernel", _d), ("*layernorm/weight", _one), ("*norm/weight", _one),
        # GPT-2
        ("*wte/embedding", _vocab), ("*wpe/embedding", _positions),
        ("*c_attn/kernel", _qkv), ("*attn/c_proj/kernel", _d), ("*c_fc/kernel", _mlp),
        ("*mlp/c_proj/kernel", _d),
        # BLOOM
        ("*word_embeddings/embedding", _vocab), ("*query_key_value/kernel", _qkv),
        ("*self_attention/dense/kernel", _d), ("*dense_h_to_4h/kernel", _mlp),
        ("*dense_4h_to_h/kernel", _d),
        # GPT-Neo (GPT-2's MLP names on [in, out] Dense kernels)
        ("*attention/out_proj/kernel", _d),
        # DistilBERT
        ("*position_embeddings/embedding", _positions),
        ("*q_lin/kernel", _heads), ("*k_lin/kernel", _kv_heads), ("*v_lin/kernel", _kv_neurons),
        ("*out_lin/kernel", _d), ("*ffn/lin1/kernel", _mlp), ("*ffn/lin2/kernel", _d),
        ("vocab_transform/kernel", _d),
        # ViT, DINOv2: a class token and a mask token are one token each, the
        # position table [1, patches + 1, d] one v per position.
        ("*embeddings/cls_token", _one), ("*embeddings/mask_token", _one),
        ("*embeddings/position_embeddings", _image_positions),
        ("*patch_embeddings/projection/kernel", _d),
        ("*attention/attention/query/kernel", _heads), ("*attention/attention/key/kernel", _kv_heads),
        ("*attention/attention/value/kernel", _kv_neurons), ("*/output/dense/kernel", _d),
        ("*intermediate/dense/kernel", _mlp), ("*mlp/fc1/kernel", _mlp), ("*mlp/fc2/kernel", _d),
        ("*layer_scale*/lambda1", _one), ("classifier/kernel", lambda c: c["num_labels"]),
        ("*/scale", _one), ("*/bias", None),
    ],
    "keras-hub": [
        # LoRA (enable_lora): A is the kernel with its last axis the rank, so
        # a query's keeps its heads (one v per head and rank direction), a
        # Dense's one per rank direction; B [rank, out] one per output.
        ("image_encoder/*/lora_kernel_a", lambda c: c["lora_rank"]),
        ("image_encoder/*/lora_kernel_b", _tower("vision", "d_model")),
        ("*/query/lora_kernel_a", lambda c: c["num_heads"] * c["lora_rank"]),
        ("*/value/lora_kernel_a", lambda c: c["num_kv_heads"] * c["lora_rank"]),
        ("*/lora_kernel_b", lambda c: c["head_dim"]),
        ("token_embedding/embeddings", _vocab), ("token_embedding/reverse_embeddings", _vocab),
        ("*/query/kernel", _heads), ("*/key/kernel", _kv_heads), ("*/value/kernel", _kv_neurons),
        ("*/attention_output/kernel", _d),
        ("*/ffw_gating/kernel", _mlp), ("*/ffw_gating_2/kernel", _mlp), ("*/ffw_linear/kernel", _d),
        ("*/feedforward_gate_dense/kernel", _mlp), ("*/feedforward_intermediate_dense/kernel", _mlp),
        ("*/feedforward_output_dense/kernel", _d),
        ("*/scale", _one),
        # PaliGemma's SigLIP tower (heads of 72 beside the decoder's 256).
        ("image_encoder/*/query_proj/kernel", _tower("vision", "num_heads")),
        ("image_encoder/*/key_proj/kernel", _tower("vision", "num_heads")),
        ("image_encoder/*/value_proj/kernel", _tower("vision", "d_model")),
        ("image_encoder/*/out_proj/kernel", _tower("vision", "d_model")),
        ("image_encoder/*/mlp_dense_1/kernel", _tower("vision", "mlp_dim")),
        ("image_encoder/*/mlp_dense_2/kernel", _tower("vision", "d_model")),
        ("image_encoder/*/embedding_conv/kernel", _tower("vision", "d_model")),
        ("image_encoder/*/position_embedding/embeddings", lambda c: _patches(c["vision"])),
        ("image_classifier/kernel", _d),
        # ViT: the class token one token, the position table one v per
        # position; LayerNormalization's beta a bias, gamma a scale.
        ("vit_patching_and_embedding/class_token", _one),
        ("*/patch_embedding/kernel", _d), ("*/position_embedding/embeddings", _image_positions),
        ("*/mlp/dense_1/kernel", _mlp), ("*/mlp/dense_2/kernel", _d),
        ("*/gamma", _one), ("*/beta", None), ("*/bias", None),
    ],
    "gemma": [
        ("*embedder/input_embedding", _vocab),
        ("*/q_einsum/w", _heads),
        ("*/kv_einsum/w", lambda c: c["num_kv_heads"] + _kv_neurons(c)),
        ("*/qkv_einsum/w", _qkv),
        ("*/attn_vec_einsum/w", _d),
        ("*/gating_einsum", lambda c: 2 * c["mlp_dim"]),
        ("*/mlp/linear", _d),
        ("*/scale", _one),
    ],
    # PyTorch checkpoints as safetensors.flax.load_file returns them: flat
    # dotted names (matched here with '.' read as '/'), nn.Linear weights
    # [out, in], GPT-2's Conv1D [in, out].
    "transformers-torch": [
        ("*embed_tokens/weight", _vocab), ("lm_head/weight", _vocab),
        # Qwen3-Next: the full-attention query holds each head's query (one v
        # per head) and output gate (one per neuron); the gated DeltaNet's
        # projections one per output, its depthwise conv one per channel;
        # the router one per expert; the experts (nn.Linear each) and the
        # shared expert per neuron, the shared expert's gate [1, d] one.
        ("*self_attn/q_proj/weight", lambda c: _heads(c) * (1 + c["head_dim"]) if _is_qwen3_next(c) else _heads(c)),
        ("*linear_attn/in_proj_qkvz/weight", lambda c: 2 * _gdn_keys(_hf_gdn(c)) + 2 * _gdn_values(_hf_gdn(c))),
        ("*linear_attn/in_proj_ba/weight", lambda c: 2 * c["native"]["linear_num_value_heads"]),
        ("*linear_attn/conv1d/weight", lambda c: 2 * _gdn_keys(_hf_gdn(c)) + _gdn_values(_hf_gdn(c))),
        ("*linear_attn/out_proj/weight", _d), ("*linear_attn/A_log", _one), ("*_bias", None),
        ("*mlp/gate/weight", lambda c: c["native"]["num_experts"]),
        ("*mlp/experts/*/gate_proj/weight", lambda c: c["native"]["moe_intermediate_size"]),
        ("*mlp/experts/*/up_proj/weight", lambda c: c["native"]["moe_intermediate_size"]),
        ("*mlp/shared_expert/gate_proj/weight", lambda c: c["native"]["shared_expert_intermediate_size"]),
        ("*mlp/shared_expert/up_proj/weight", lambda c: c["native"]["shared_expert_intermediate_size"]),
        ("*mlp/shared_expert_gate/weight", _one),
        ("*q_proj/weight", _heads), ("*k_proj/weight", _kv_heads), ("*v_proj/weight", _kv_neurons),
        ("*o_proj/weight", _d), ("*gate_proj/weight", _mlp), ("*up_proj/weight", _mlp),
        ("*down_proj/weight", _d), ("*norm/weight", _one),
        ("*wte/weight", _vocab), ("*wpe/weight", _positions),
        ("*c_attn/weight", _qkv), ("*attn/c_proj/weight", _d), ("*c_fc/weight", _mlp),
        ("*mlp/c_proj/weight", _d), ("*ln_*/weight", _one),
        ("*/bias", None),
    ],
    # Models built from Equinox's own layers (Linear weight [out, in],
    # MultiheadAttention's query_proj/key_proj/value_proj/output_proj,
    # Conv2d weight [out, in, kh, kw]).
    "equinox": [
        ("token_embedding/weight", _vocab), ("embed_tokens/weight", _vocab),
        ("position_embedding/weight", lambda c: c["native"]["max_positions"]),
        ("lm_head/weight", _vocab),
        ("*/query_proj/weight", _heads), ("*/key_proj/weight", _kv_heads),
        ("*/value_proj/weight", _kv_neurons), ("*/output_proj/weight", _d),
        ("*/mlp_in/weight", _mlp), ("*/mlp_out/weight", _d),
        ("*/q_proj/weight", _heads), ("*/k_proj/weight", _kv_heads), ("*/v_proj/weight", _kv_neurons),
        ("*/o_proj/weight", _d), ("*/gate_proj/weight", _mlp), ("*/up_proj/weight", _mlp),
        ("*/down_proj/weight", _d), ("*norm/weight", _one),
        # The CNN: one v per output channel / neuron.
        ("layers/0/weight", lambda c: c["native"]["convs"][0][1]),
        ("layers/1/weight", lambda c: c["native"]["convs"][1][1]),
        ("layers/2/weight", lambda c: c["native"]["linears"][0][1]),
        ("layers/3/weight", lambda c: c["native"]["linears"][1][1]),
        ("*/bias", None),
    ],
    "maxtext": [
        ("*token_embedder/embedding", _vocab), ("*logits_dense/kernel", _vocab),
        # DeepSeek's multi-head latent attention: the low-rank query wq_a
        # [d, q_lora] and the compressed keys/values with the shared rope key
        # wkv_a [d, kv_lora + rope] one v per output; wq_b [q_lora, heads,
        # qk_head] one per head; wkv_b [kv_lora, heads, nope + v] holds each
        # head's key and value parts, one v per (head, output), never across heads.
        ("*/wq_a/kernel", lambda c: c["q_lora_rank"]),
        ("*/wkv_a/kernel", lambda c: c["kv_lora_rank"] + c["qk_rope_head_dim"]),
        # DeepSeek-V3.2's lightning indexer: its queries wq_b [q_lora,
        # indexer heads, indexer head] one v per head, its one shared key
        # wk [d, indexer head] one, its per-head weights one per head.
        ("*/indexer/wq_b/kernel", lambda c: c["indexer_n_heads"]),
        ("*/indexer/wk/kernel", _one),
        ("*/indexer/weights_proj/kernel", lambda c: c["indexer_n_heads"]),
        ("*/wq_b/kernel", _heads),
        ("*/wkv_b/kernel", lambda c: c["num_heads"] * (c["qk_nope_head_dim"] + c["v_head_dim"])),
        # DeepSeek's MoE: the router one v per expert, each routed expert's
        # neurons their own, the shared experts one MLP of shared * moe width.
        ("*/MoeBlock_0/gate/kernel", _experts),
        ("*/MoeBlock_0/wi_[01]", lambda c: _experts(c) * c["moe_mlp_dim"]),
        ("*/MoeBlock_0/wo", lambda c: _experts(c) * _d(c)),
        ("*/shared_experts/wi_[01]/kernel", lambda c: c["shared_experts"] * c["moe_mlp_dim"]),
        # GPT-OSS's RoutedMoE, GptOssMlp (no "moe" in its name): the router
        # one v per expert, each expert's mlp_dim-wide neurons its own; its
        # biases (and the attention's) plain Adam; the attention sinks, one
        # logit per head, a tensor the official rules give one v.
        ("*/GptOssMlp/gate/kernel", _experts),
        ("*/GptOssMlp/wi_[01]", lambda c: _experts(c) * _mlp(c)),
        ("*/GptOssMlp/wo", lambda c: _experts(c) * _d(c)),
        ("*/bias", None), ("*_bias", None), ("*/sinks", _one),
        # Qwen3.5: the full-attention query [emb, heads, 2 * head_dim] holds
        # each head's query (one v per head) and its output gate (one per
        # neuron); the gated DeltaNet's projections one v per output (its
        # fused in_proj_qkvz too: finer than per key head for its q and k),
        # its depthwise conv one per channel, A_log one per tensor; the MoE's
        # router one per expert, each expert's neurons their own, the shared
        # expert an MLP of moe_mlp_dim, its gate [emb, 1] one v.
        ("*/attention/attention/query/kernel", lambda c: _heads(c) * (1 + c["head_dim"])),
        ("*/attention/in_proj_qkvz/kernel", lambda c: 2 * _gdn_keys(c) + 2 * _gdn_values(c)),
        ("*/attention/in_proj_ba/kernel", lambda c: 2 * c["gdn_num_value_heads"]),
        ("*/attention/conv1d/kernel", lambda c: 2 * _gdn_keys(c) + _gdn_values(c)),
        ("*/attention/out_proj/kernel", _d), ("*/attention/A_log", _one),
        ("*/routed_experts/gate/kernel", _experts),
        ("*/routed_experts/wi_[01]", lambda c: _experts(c) * c["moe_mlp_dim"]),
        ("*/routed_experts/wo", lambda c: _experts(c) * _d(c)),
        ("*/shared_expert/wi_[01]/kernel", lambda c: c["shared_experts"] * c["moe_mlp_dim"]),
        ("*/shared_expert_gate/kernel", _one),
        ("*/query/kernel", _heads), ("*/key/kernel", _kv_heads), ("*/value/kernel", _kv_neurons),
        ("*/out/kernel", _d),
        ("*/wi_0/kernel", _mlp), ("*/wi_1/kernel", _mlp), ("*/wo/kernel", _d),
        ("*/scale", _one),
    ],
    # Flax NNX models (nnx.state(model, nnx.Param)): Llama 3 and Qwen store
    # query/key/value as [embed, heads, head_dim] Einsum weights 'w'; Gemma as
    # DeepMind's gemma does. Gemma 4's layers differ (global layers' head size
    # and key heads, the kv-shared layers' wider MLP): where they do, the
    # count is (config, layer index) -> blocks, from _tunix_layer.
    "tunix": [
        ("embedder/input_embedding", _vocab), ("embedder/per_layer_input_embedding", _vocab),
        ("embedder/per_layer_model_projection/w",
         lambda c: c["num_layers"] * c["native"]["per_layer_input_dim"]),
        ("lm_head/w", _vocab),
        ("*/attn/q_proj/w", _heads), ("*/attn/k_proj/w", _kv_heads),
        ("*/attn/v_proj/w", _kv_neurons), ("*/attn/o_proj/w", _d), ("*/attn/*_bias", None),
        ("*/attn/q_einsum/w", _heads),
        # [2, K, D, H]: k one per head, v one per output neuron (K * H).
        ("*/attn/kv_einsum/w", lambda c, i: _tunix_layer(c, i).kv_heads * (1 + _tunix_layer(c, i).head)),
        # Gemma 4's global layers sharing keys and values: one v per key head.
        ("*/attn/k_einsum/w", lambda c, i: _tunix_layer(c, i).kv_heads),
        ("*/attn/attn_vec_einsum/w", _d),
        ("*/mlp/gate_proj/kernel", lambda c, i: _tunix_layer(c, i).mlp),
        ("*/mlp/up_proj/kernel", lambda c, i: _tunix_layer(c, i).mlp),
        ("*/mlp/down_proj/kernel", _d),
        # Qwen3-MoE: each expert's own neurons; the router, one v per expert.
        ("*/mlp/gate_proj", lambda c: _experts(c) * _mlp(c)),
        ("*/mlp/up_proj", lambda c: _experts(c) * _mlp(c)),
        ("*/mlp/down_proj", lambda c: _experts(c) * _d(c)),
        ("*/mlp/router/kernel", _experts),
        # Gemma 4 26B-A4B: experts' gate|up [E, 2, F, D] and down [E, F, D].
        ("*/moe/gating_einsum", lambda c: _experts(c) * 2 * c["expert_dim"]),
        ("*/moe/linear", lambda c: _experts(c) * _d(c)),
        ("*/moe/router_logits", _experts),
        ("*/moe/per_expert_scale", _one), ("*/moe/router_scale", _one),
        # Gemma 4 E2B: each layer's input from the per-layer embedding.
        ("*/per_layer_input_gate/w", lambda c: c["native"]["per_layer_input_dim"]),
        ("*/per_layer_projection/w", _d),
        ("*/skip_scale", _one), ("*/scale", _one), ("*norm/w", _one),
    ],
    # AXLearn: every leaf a `weight` (or `scale`), read by its names; the
    # layer axis of a RepeatedTransformerLayer first.
    "axlearn": [
        ("*emb/token_emb/weight", _vocab), ("*lm_head/weight", _vocab),
        ("*i_proj/q_proj/weight", _heads), ("*i_proj/k_proj/weight", _kv_heads),
        ("*i_proj/v_proj/weight", _kv_neurons), ("*i_proj/qkv_proj/weight", _qkv),
        ("*attention/o_proj/weight", _d),
        ("*feed_forward/linear1_[01]/weight", _mlp), ("*feed_forward/linear2/weight", _d),
        ("*/scale", _one),
    ],
    "openpi": [
        # pi0: SigLIP So400m (big_vision's, scanned) and PaliGemma's Gemma
        # with the action expert's layers beside its own in one scanned stack
        # (`_1`: the expert's, its sizes in config["expert"]).
        ("*/bias", None),
        ("*/MultiHeadDotProductAttention_0/query/kernel", _tower("vision", "num_heads")),
        ("*/MultiHeadDotProductAttention_0/key/kernel", _tower("vision", "num_heads")),
        ("*/MultiHeadDotProductAttention_0/value/kernel",
         lambda c: c["vision"]["num_heads"] * c["vision"]["head_dim"]),
        ("*/MultiHeadDotProductAttention_0/out/kernel", _tower("vision", "d_model")),
        ("*/MlpBlock_0/Dense_0/kernel", _tower("vision", "mlp_dim")),
        ("*/MlpBlock_0/Dense_1/kernel", _tower("vision", "d_model")),
        ("PaliGemma/img/embedding/kernel", _tower("vision", "d_model")),  # the patch conv, per output channel
        ("PaliGemma/img/pos_embedding", lambda c: _patches(c["vision"])),
        ("PaliGemma/img/head/kernel", _d),
        ("PaliGemma/llm/embedder/input_embedding", _vocab),
        ("*/attn/q_einsum/w", _heads), ("*/attn/q_einsum_1/w", _tower("expert", "num_heads")),
        ("*/attn/kv_einsum/w", lambda c: c["num_kv_heads"] * (1 + c["head_dim"])),
        ("*/attn/kv_einsum_1/w", lambda c: c["expert"]["num_kv_heads"] * (1 + c["expert"]["head_dim"])),
        ("*/attn/attn_vec_einsum/w", _d), ("*/attn/attn_vec_einsum_1/w", _tower("expert", "d_model")),
        ("*/mlp/gating_einsum", lambda c: 2 * c["mlp_dim"]),
        ("*/mlp_1/gating_einsum", lambda c: 2 * c["expert"]["mlp_dim"]),
        ("*/mlp/linear", _d), ("*/mlp_1/linear", _tower("expert", "d_model")),
        # LoRA (lora.Einsum keeps the einsum's leading axes in both factors):
        # A one v per head / part and rank direction, B one per output neuron;
        # the attention output's heads are contracted.
        *(
            entry
            for suffix, sizes, rank in (("", lambda c: c, "llm"), ("_1", lambda c: c["expert"], "expert"))
            for entry in _openpi_lora(suffix, sizes, rank)
        ),
        ("*/scale", _one),
        # the action projections, one v per output
        ("action_out_proj/kernel", lambda c: c["native"]["Pi0Config"]["action_dim"]),
        ("*_proj/kernel", _tower("expert", "d_model")), ("action_time_mlp_*/kernel", _tower("expert", "d_model")),
    ],
    "levanter": [
        # haliax NamedArrays: the array under [0]; the library reads the axis names.
        ("*/bias/0", None),
        ("embeddings/token_embeddings/weight/0", _vocab), ("lm_head/weight/0", _vocab),
        ("embeddings/position_embeddings/weight/0", lambda c: c["native"]["seq_len"]),
        ("*/q_proj/weight/0", _heads), ("*/k_proj/weight/0", _kv_heads),
        ("*/v_proj/weight/0", _kv_neurons), ("*/o_proj/weight/0", _d),
        ("*/gate_proj/weight/0", _mlp), ("*/up_proj/weight/0", _mlp), ("*/down_proj/weight/0", _d),
        # GPT-2: c_attn's outputs are (qkv, heads, head_size).
        ("*/c_attn/weight/0", _qkv), ("*/attn/c_proj/weight/0", _d),
        ("*/mlp/c_fc/weight/0", _mlp), ("*/mlp/c_proj/weight/0", _d),
        # Mixtral: the router (one v per expert it scores) and each expert's own
        # MLP neurons (MoELinear weights [experts, ...]).
        ("*/block_sparse_moe/gate/weight/0", _experts),
        ("*/experts/w1/weight/0", lambda c: _experts(c) * _mlp(c)),
        ("*/experts/w3/weight/0", lambda c: _experts(c) * _mlp(c)),
        ("*/experts/w2/weight/0", lambda c: _experts(c) * _d(c)),
        ("*norm/weight/0", _one), ("*/ln_*/weight/0", _one),
    ],
}


def expected_blocks(record: dict, path: str, shape: tuple[int, ...]) -> int:
  config = record["config"]
  if config.get("layout") == "torch":
    path = path.replace(".", "/")
  for pattern, per_layer in EXPECTED[record["library"]]:
    if fnmatch.fnmatchcase(path, pattern):
      if per_layer is None:  # a bias: plain Adam, one v per element
        return math.prod(shape)
      stacked = any(path.startswith(prefix + "/") for prefix in record.get("stacked", {}))
      layers = shape[config["layer_axis"]] if stacked else 1
      if per_layer.__code__.co_argcount == 2:  # (config, layer index): layers that differ
        return per_layer(config, int(path.split("/")[1]))
      return per_layer(config) * layers
  raise AssertionError(f"{record['name']}: no expectation for leaf {path} {shape}")


def what_the_user_passes(record: dict) -> dict:
  if "stacked_modules" in record:
    return {}  # haliax: the tree names its axes, its heads and its layer stacks
  if "user_passes" in record:  # what its recorder says a user of that library passes
    passes = dict(record["user_passes"])
    if "blocks" in passes:
      passes["blocks"] = optax_mini.BlockRules(**passes["blocks"])
    return passes
  config = record["config"]
  kwargs = {"head_dim": config["head_dim"]} if config["head_dim"] is not None else {}
  rules = {}
  if config.get("scanned"):
    rules["stacked"] = dict(record["stacked"])
  if config.get("layout") == "torch":
    rules["weight_layout"] = "torch"
  if rules:
    kwargs["blocks"] = optax_mini.BlockRules(**rules)
  return kwargs


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem)
def test_every_leaf_gets_the_official_blocks(fixture):
  record = load(fixture)
  tree = rebuild(record)
  report = optax_mini.explain(tree, **what_the_user_passes(record))
  paths = {tuple(leaf["path"]): leaf for leaf in record["leaves"]}
  assert len(report.rows) == len(paths)
  wrong = []
  leaves_with_path = jax.tree_util.tree_flatten_with_path(tree)[0]
  for (key_path, leaf), row in zip(leaves_with_path, report.rows):
    path = "/".join(_component(k) for k in key_path)
    want = expected_blocks(record, path, leaf.shape)
    if row.num_blocks != want:
      wrong.append(f"{path} {leaf.shape}: {row.num_blocks} blocks ({row.role}), expected {want}")
  assert not wrong, f"{record['name']}: {len(wrong)} leaves mis-partitioned:\n" + "\n".join(wrong[:20])
  # The whole point: about half of AdamW's state (for real sizes; a toy's
  # per-tensor values weigh more).
  if report.num_params >= 10_000_000:
    assert report.ratio <= 0.502, report.ratio
  assert report.num_v == sum(expected_blocks(record, "/".join(map(str, leaf["path"])), tuple(leaf["shape"]))
                             for leaf in record["leaves"])


HEAD_COUNT_RECORDS = [p for p in FIXTURES if set(load(p).get("user_passes", {}).get("blocks", {}))
                      & {"num_heads", "num_kv_heads"} and "head_counts_needed" not in load(p)]
COUNTS_NEEDED_RECORDS = [p for p in FIXTURES if "head_counts_needed" in load(p)]


@pytest.mark.parametrize("fixture", COUNTS_NEEDED_RECORDS, ids=lambda p: p.stem)
def test_a_tree_that_needs_head_counts_raises_without_them(fixture):
  """AXLearn's FusedGroupedQKVLinear [model, heads + 2 kv_heads, head_dim]:
  nothing in the tree says where the query heads end, so without the counts
  it raises, naming them, instead of guessing a split."""
  record = load(fixture)
  passes = what_the_user_passes(record)
  rules = passes["blocks"]
  without = {**passes, "blocks": optax_mini.BlockRules(
      **{f.name: getattr(rules, f.name) for f in dataclasses.fields(rules)
         if f.name not in ("num_heads", "num_kv_heads")})}
  with pytest.raises(ValueError, match="num_heads"):
    optax_mini.explain(rebuild(record), **without)


@pytest.mark.parametrize("fixture", HEAD_COUNT_RECORDS, ids=lambda p: p.stem)
def test_head_counts_are_not_needed_beside_an_attention_output(fixture):
  """tunix's Llama 3 and Qwen keep q/k/v as [embed, heads, head_dim] under
  plain names, which could as well be heads-first: their recorders pass the
  head counts. The o_proj/w [heads, head_dim, embed] beside them settles it,
  so passing nothing gives the same blocks, leaf by leaf."""
  record = load(fixture)
  tree = rebuild(record)
  passes = what_the_user_passes(record)
  rules = passes["blocks"]
  without = {**passes, "blocks": optax_mini.BlockRules(
      **{f.name: getattr(rules, f.name) for f in dataclasses.fields(rules)
         if f.name not in ("num_heads", "num_kv_heads")})}
  with_counts = optax_mini.explain(tree, **passes)
  without_counts = optax_mini.explain(tree, **without)
  assert [row.num_blocks for row in without_counts.rows] == [row.num_blocks for row in with_counts.rows]


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem)
def test_int8_first_moment_on_every_tree(fixture):
  """``mu_dtype=jnp.int8`` on the real trees: each leaf's m takes the bytes
  the documented rule gives (1 byte per element plus a float32 scale per
  block along the last axis if one layer's slice has >= 4096 elements and the
  last axis is not the layer axis, else float32), and a real-size model's
  state is at most 0.13x a float32 AdamW's (0.26x with bfloat16 parameters,
  whose AdamW state is bfloat16)."""
  from tests.test_int8 import reference_block

  record = load(fixture)
  tree = rebuild(record)
  kwargs = what_the_user_passes(record)
  layer_axis = record["config"].get("layer_axis")
  want = 0
  for leaf in record["leaves"]:
    shape, path = tuple(leaf["shape"]), "/".join(map(str, leaf["path"]))
    stacked = any(path.startswith(prefix + "/") for prefix in record.get("stacked", {}))
    per_layer = math.prod(shape) // (shape[layer_axis] if stacked else 1)
    last_is_layer = stacked and layer_axis % len(shape) == len(shape) - 1
    if per_layer >= 4096 and not last_is_layer:
      n, last = math.prod(shape), shape[-1]
      want += n + 4 * (n // last) * -(-last // reference_block(last))
    else:
      want += 4 * math.prod(shape)
  tx = optax_mini.adam_mini(1e-3, mu_dtype=jnp.int8, **kwargs)
  state = jax.eval_shape(tx.init, tree)
  mu = next(s.mu for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "mu")) if hasattr(s, "mu"))
  assert sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(mu)) == want
  report = optax_mini.explain(tree, mu_dtype=jnp.int8, **kwargs)
  # At 22M parameters (DINOv2-small) the float32 m and per-element v of the
  # biases and norms already weigh 0.004x: 0.131x.
  if report.num_params >= 50_000_000:
    bf16 = {leaf["dtype"] for leaf in record["leaves"]} == {"bfloat16"}
    bound = INT8_RATIO_BOUND.get(record["name"], 0.26 if bf16 else 0.13)
    assert report.adam_mini_mu_dtype_bytes / report.adamw_bytes <= bound


#: Trees whose widths take smaller quantization blocks: GPT-OSS's 2880 =
#: 64 * 45 has no divisor of 128 or 256, so its blocks are 64 elements and
#: the scales weigh 4/64 of the codes (0.133x, not 0.127x).
#: openpi's LoRA tree: SigLIP's width 1152 = 9 * 128 takes blocks of 128 and
#: its biases keep a float32 m (SigLIP is 415M of its 468M trainable
#: parameters), and the LoRA factors' last axis is the rank, 16 or 32 wide,
#: the blocks as wide: 0.132x.
INT8_RATIO_BOUND = {"maxtext_gpt_oss_20b": 0.134, "openpi_pi0_lora": 0.132}


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem)
def test_fixture_matches_its_config(fixture):
  # The recorded tree is the config's model: parameter count from the config.
  record = load(fixture)
  c = record["config"]
  total = sum(math.prod(leaf["shape"]) for leaf in record["leaves"])
  if c.get("lora_rank") and record["library"] == "keras-hub":
    # enable_lora's factors alone: each layer's query A [.., N, .., r] and B
    # [r, H], value A [.., K, .., r] and B; SigLIP's Dense query_proj and
    # value_proj A [dv, r], B [r, dv] and their biases (trainable too).
    r = c["lora_rank"]
    decoder = c["num_layers"] * r * (c["d_model"] * (c["num_heads"] + c["num_kv_heads"]) + 2 * c["head_dim"])
    v = c.get("vision")
    vision = v["num_layers"] * 2 * (2 * r * v["d_model"] + v["d_model"]) if v else 0
    assert total == decoder + vision, (record["name"], total, decoder + vision)
    return
  if c["d_model"] is None:  # the CNN: its convolutions and linear layers
    native = c["native"]
    convs = sum(o * (i * native["kernel_size"] ** 2 + 1) for i, o, _ in native["convs"])
    assert total == convs + sum(o * (i + 1) for i, o in native["linears"])
    return
  if c.get("image_size"):  # a ViT: patch projection, layers, position table, classifier
    per_layer = 4 * c["d_model"] ** 2 + 2 * c["d_model"] * c["mlp_dim"]
    patch = c["patch_size"] ** 2 * c["num_channels"] * c["d_model"]
    matrices = (patch + c["num_layers"] * per_layer + _image_positions(c) * c["d_model"]
                + c["d_model"] * (c["num_labels"] or 0))
    assert matrices <= total <= matrices * 1.02, (record["name"], total, matrices)
    return
  if record["library"] == "openpi":
    matrices = _openpi_matrices(c)
    assert matrices <= total <= matrices * 1.02, (record["name"], total, matrices)
    return
  if "vision" in c:  # a vision tower beside the decoder: add its matrices
    v = c["vision"]
    vision = (v["patch_size"] ** 2 * v["num_channels"] * v["d_model"] + _patches(v) * v["d_model"]
              + v["num_layers"] * (4 * v["d_model"] ** 2 + 2 * v["d_model"] * v["mlp_dim"])
              + v["d_model"] * c["d_model"])
    decoder = c["vocab_size"] * c["d_model"] + c["num_layers"] * (
        c["d_model"] * c["head_dim"] * (2 * c["num_heads"] + 2 * c["num_kv_heads"])
        + 3 * c["d_model"] * c["mlp_dim"])
    matrices = vision + decoder
    assert matrices <= total <= matrices * 1.02, (record["name"], total, matrices)
    return
  if c.get("kv_lora_rank"):  # DeepSeek: latent attention, dense then MoE layers
    matrices = _deepseek_matrices(c)
    assert matrices <= total <= matrices * 1.02, (record["name"], total, matrices)
    return
  if c.get("gdn_num_key_heads") or _is_qwen3_next(c):  # gated DeltaNet and full attention, MoE
    matrices = _qwen3_5_matrices(_hf_gdn(c) if _is_qwen3_next(c) else c)
    assert matrices <= total <= matrices * 1.02, (record["name"], total, matrices)
    return
  if record["name"].startswith("tunix_gemma4"):
    matrices = _gemma4_matrices(c)
    assert matrices <= total <= matrices * 1.02, (record["name"], total, matrices)
    return
  attention = c["d_model"] * c["head_dim"] * (2 * c["num_heads"] + 2 * c["num_kv_heads"])
  per_layer_matrices = attention + 3 * c["d_model"] * c["mlp_dim"]
  if any(two_matrix_mlp in record["name"] for two_matrix_mlp in ("gpt2", "gptneo", "bloom", "distilbert")):
    per_layer_matrices = attention + 2 * c["d_model"] * c["mlp_dim"]
  if c.get("num_experts"):  # each expert's MLP, and the router
    per_layer_matrices = attention + c["num_experts"] * (3 * c["d_model"] * c["mlp_dim"] + c["d_model"])
  embedding = c["vocab_size"] * c["d_model"] * (1 if c["tied_embeddings"] else 2)
  matrices = embedding + c["num_layers"] * per_layer_matrices
  # Everything else (norms, biases, position tables) is small.
  assert matrices <= total <= matrices * 1.02, (record["name"], total, matrices)


def _openpi_matrices(c: dict) -> int:
  """pi0's trainable matrices from its config: SigLIP's (patch conv,
  positions, layers, the head into the decoder's width), the action
  projections, and either both Gemmas' (full fine-tuning: PaliGemma's and
  the action expert's layers, one embedding) or their LoRA factors only
  (the rest frozen)."""
  v, a = c["vision"], c["native"]["Pi0Config"]["action_dim"]
  vision = (v["patch_size"] ** 2 * v["num_channels"] * v["d_model"] + _patches(v) * v["d_model"]
            + v["num_layers"] * (4 * v["d_model"] ** 2 + 2 * v["d_model"] * v["mlp_dim"])
            + v["d_model"] * c["d_model"])
  e = c["expert"]["d_model"]
  action = 2 * a * e + 2 * e * e + e * e + e * a  # in, state, time MLP in (2e -> e) and out, out
  decoder = 0 if c["lora"] else c["vocab_size"] * c["d_model"]
  for g, rank in ((c, "llm"), (c["expert"], "expert")):
    d, n, k, h, f = g["d_model"], g["num_heads"], g["num_kv_heads"], g["head_dim"], g["mlp_dim"]
    if c["lora"]:
      r = c["lora"][rank]
      # q (a [n, d, r], b [n, r, h]), kv (2k of each), attn_vec (a [n, h, r], b [n, r, d]),
      # gating (a [2, d, r], b [2, r, f]), linear (a [f, r], b [r, d])
      decoder += c["num_layers"] * r * (n * d + n * h + 2 * k * (d + h) + n * h + n * d
                                        + 2 * (d + f) + f + d)
    else:
      decoder += c["num_layers"] * (2 * n * d * h + 2 * k * d * h + 3 * d * f)
  return vision + action + decoder


def _qwen3_5_matrices(c: dict) -> int:
  """Qwen3.5's matrices from its config: every inhomogeneous_layer_cycle_interval-th
  layer full attention (its query twice as wide: query and gate), the others a
  gated DeltaNet; every layer a routed MoE, its router, a shared expert and its gate."""
  d, heads, kv, head = c["d_model"], c["num_heads"], c["num_kv_heads"], c["head_dim"]
  keys, values = _gdn_keys(c), _gdn_values(c)
  full = c["num_layers"] // c["inhomogeneous_layer_cycle_interval"]
  linear = c["num_layers"] - full
  attention = d * heads * 2 * head + 2 * d * kv * head + heads * head * d
  delta_net = (d * (2 * keys + 2 * values) + d * 2 * c["gdn_num_value_heads"]
               + c["gdn_conv_kernel_dim"] * (2 * keys + values) + values * d)
  moe = (c["num_experts"] * (3 * d * c["moe_mlp_dim"] + d)
         + c["shared_experts"] * 3 * d * c["moe_mlp_dim"] + d)
  return 2 * c["vocab_size"] * d + full * attention + linear * delta_net + c["num_layers"] * moe


def _deepseek_matrices(c: dict) -> int:
  """DeepSeek-V2/V3's matrices from its config (the papers' parameter count)."""
  d, heads = c["d_model"], c["num_heads"]
  rope, nope, v = c["qk_rope_head_dim"], c["qk_nope_head_dim"], c["v_head_dim"]
  query = (d * c["q_lora_rank"] + c["q_lora_rank"] * heads * (nope + rope) if c["q_lora_rank"]
           else d * heads * (nope + rope))
  attention = (query + d * (c["kv_lora_rank"] + rope) + c["kv_lora_rank"] * heads * (nope + v)
               + heads * v * d)
  if c.get("indexer_n_heads"):  # V3.2's lightning indexer
    attention += (c["q_lora_rank"] * c["indexer_n_heads"] * c["indexer_head_dim"]
                  + d * c["indexer_head_dim"] + d * c["indexer_n_heads"])
  dense = c["first_num_dense_layers"]
  moe = c["num_layers"] - dense
  experts = c["num_experts"] + c["shared_experts"]
  return (2 * c["vocab_size"] * d + c["num_layers"] * attention + dense * 3 * d * c["mlp_dim"]
          + moe * (experts * 3 * d * c["moe_mlp_dim"] + d * c["num_experts"]))


class _Layer(NamedTuple):
  head: int  # a head's size
  kv_heads: int
  keys_are_values: bool  # one k_einsum for both
  mlp: int  # the MLP's width


def _tunix_layer(c: dict, i: int) -> _Layer:
  """Layer ``i`` of a tunix Gemma, from its config (as tunix 0.1.7's Gemma4
  builds them): Gemma 4's global layers (every len(attention_pattern)-th) use
  head size global_key_size and, with num_global_kv_heads, one k_einsum for
  keys and values; the last frac_shared_layers of the layers (which reuse
  earlier layers' keys and values) widen their MLP to
  override_kv_shared_ffw_hidden. Earlier Gemmas' layers are all alike."""
  n = c["native"]
  plain = _Layer(c["head_dim"], c["num_kv_heads"], False, c["mlp_dim"])
  if "attention_pattern" not in n:
    return plain
  pattern, layers = n["attention_pattern"], c["num_layers"]
  is_global = pattern[i % len(pattern)] == "AttentionType.GLOBAL"
  shared = i >= int(layers - n["frac_shared_layers"] * layers)
  return _Layer(
      n["global_key_size"] if is_global else plain.head,
      n["num_global_kv_heads"] if is_global and n["num_global_kv_heads"] else plain.kv_heads,
      is_global and n["k_eq_v_global"],
      n["override_kv_shared_ffw_hidden"] if shared and n["override_kv_shared_ffw_hidden"] else plain.mlp,
  )


def _gemma4_matrices(c: dict) -> int:
  """Gemma 4's matrices from its config, layer by layer (:func:`_tunix_layer`);
  E2B/E4B add per-layer input embeddings."""
  d, heads, vocab, layers = c["d_model"], c["num_heads"], c["vocab_size"], c["num_layers"]
  per_layer_dim = c["native"]["per_layer_input_dim"]
  total = vocab * d + (vocab + d) * layers * per_layer_dim
  for i in range(layers):
    layer = _tunix_layer(c, i)
    kv = (1 if layer.keys_are_values else 2) * layer.kv_heads * d * layer.head
    total += 2 * heads * d * layer.head + kv + 3 * d * layer.mlp + 2 * d * per_layer_dim
    if c.get("num_experts"):
      total += c["num_experts"] * 3 * d * c["expert_dim"] + d * c["num_experts"]
  return total


# library -> (package, recorder, why a user's environment may lack it: the
# skip reason says it).
LIVE = {
    "transformers": ("transformers", "record_hf_flax",
                     "transformers 4.x (5 dropped Flax) pinned with jax and flax"),
    "transformers-torch": ("transformers", "record_hf_torch",
                           "transformers 4.57.6 with torch 2.13.0 (built on torch's meta device)"),
    "equinox": ("equinox", "record_equinox", "equinox 0.13.8"),
    "keras-hub": ("keras_hub", "record_keras_hub", "keras-hub installed without its TensorFlow dependency"),
    "gemma": ("gemma", "record_gemma", "Python >= 3.12 and a pinned environment"),
    "maxtext": ("maxtext", "record_maxtext", "Python >= 3.12 and a pinned environment"),
    "tunix": ("tunix", "record_tunix",
              "google-tunix 0.1.7 installed without TensorFlow Datasets and grain"),
    "axlearn": ("axlearn", "record_axlearn",
                "a source checkout of apple/axlearn at 34aed43 (the PyPI release is from 2024)"),
    "openpi": ("openpi", "record_openpi",
               "a source checkout of Physical-Intelligence/openpi at 15a9616 (not on PyPI; it pins jax 0.5.3)"),
    "levanter": ("levanter", "record_levanter",
                 "levanter 1.2.dev1644 and its dependencies (ray, wandb, datasets, ...)"),
}


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem)
def test_live_library_builds_the_recorded_tree(fixture, monkeypatch):
  record = load(fixture)
  package, recorder, needs = LIVE[record["library"]]
  if package == "keras_hub":
    # Keras picks its backend at import (TensorFlow by default, not installed).
    monkeypatch.setenv("KERAS_BACKEND", "jax")
  pytest.importorskip(
      package,
      reason=f"{package} is not installed (it needs {needs}: see "
      f"tests/third_party/{recorder}.py); the recorded fixture stands in for it",
  )
  if recorder == "record_hf_torch":
    pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0); "
                        "the recorded fixture stands in for the live model")
  monkeypatch.syspath_prepend(str(HERE))
  module = importlib.import_module(recorder)
  tree, config = module.build(record["name"])
  rebuilt = {
      tuple(_component(k) for k in path): tuple(x.shape)
      for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
  }
  recorded = {tuple(str(c) for c in leaf["path"]): tuple(leaf["shape"]) for leaf in record["leaves"]}
  assert rebuilt == recorded
  if "stacked_modules" in record:  # and what the library reads: names, modules, stacks
    live_leaves, live_stacks = module.describe(tree)
    assert live_leaves == record["leaves"] and live_stacks == record["stacked_modules"]
  assert {k: v for k, v in config.items() if k != "native"} == {
      k: v for k, v in record["config"].items() if k != "native"
  }


README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _count(n: int) -> str:
  return f"{n / 1e9:.2f}B" if n >= 100_000_000 else f"{n / 1e6:.2f}M"


def your_model_rows() -> list[str]:
  """The README's "Your model" table, recomputed from the fixtures."""
  rows = []
  for fixture in FIXTURES:
    record = load(fixture)
    if "dummy" in record["name"]:
      continue
    kwargs = what_the_user_passes(record)
    report = optax_mini.explain(rebuild(record), mu_dtype=jnp.int8, **kwargs)
    passed = [f"`head_dim={kwargs['head_dim']}`"] if "head_dim" in kwargs else []
    if "blocks" in kwargs:
      rules = kwargs["blocks"]
      stacked = {pattern: axes[0] if len(axes) == 1 else axes for pattern, axes in rules.stacked}
      fields = [f"stacked={stacked}"] if stacked else []
      fields += [f"weight_layout={rules.weight_layout!r}"] if rules.weight_layout else []
      fields += [f"{name}={getattr(rules, name)}" for name in ("num_heads", "num_kv_heads")
                 if getattr(rules, name) is not None]
      passed.append(f"`blocks=BlockRules({', '.join(fields)})`")
    passed = ", ".join(passed) or "nothing"
    dtypes = {leaf["dtype"] for leaf in record["leaves"]}
    int8 = report.adam_mini_mu_dtype_bytes / report.adamw_bytes
    rows.append(
        f"| {record['library']} {record['library_version']} | `{record['name']}` "
        f"| {_count(report.num_params)} {'/'.join(sorted(dtypes))} | {passed} | {report.num_v:,} "
        f"| {report.ratio:.3f}x | {int8:.3f}x |"
    )
  return rows


def test_readme_your_model_table_is_the_librarys():
  text = README.read_text()
  missing = [row for row in your_model_rows() if row not in text]
  assert not missing, "README 'Your model' rows differ from the fixtures:\n" + "\n".join(missing)
