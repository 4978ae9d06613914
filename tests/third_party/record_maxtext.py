"""Records MaxText's parameter trees (paths and shapes, scanned layers).

MaxText (``pip install maxtext``, package ``maxtext``; AI-Hypercomputer/maxtext)
builds each model from its own ``pyconfig`` (``base.yml`` + ``model_name=...``)
with ``scan_layers=True``: the decoder layers are one stacked module whose
``nnx.Param`` leaves carry the layer axis at ``param_scan_axis`` (1). This module
builds that tree the way MaxText does, on a 1-device CPU mesh, without weights:
``jax.eval_shape`` of the Transformer's ``init`` (MaxText's
``maxtext_utils.get_abstract_param``), keeping the ``'params'`` collection, and
checks it against MaxText's pure-NNX path (``create_nnx_abstract_model`` +
``nnx.state(model, nnx.Param)``, what its pre-training optimizer sees).

Nothing is imported from MaxText at import time. Needs Python >= 3.12.
Install (maxtext 0.2.5, CPU; its full dependency list is large, so no-deps plus
what the model-building import path needs)::

    pip install --no-deps maxtext==0.2.5
    pip install jax==0.11.1 jaxlib==0.11.1 flax==0.12.9 optax==0.2.8 \\
        omegaconf==2.3.1 ml-collections==1.1.0 pydantic==2.13.5 packaging==25.0 \\
        aqtp==0.9.0 qwix==0.1.8 jinja2==3.1.6 sympy==1.14.0 tokamax==0.0.12 \\
        pathwaysutils==0.1.11 huggingface-hub==1.32.0 transformers==5.17.0 \\
        grain==0.2.18 drjax==0.2.1 jaxtyping==0.3.11 pillow==12.3.0 \\
        tiktoken==0.14.0 sentencepiece==0.2.2

Run: ``python tests/third_party/record_maxtext.py [fixture ...]`` (writes ``trees/maxtext_*.json``;
all of them without arguments).

DeepSeek (``decoder_block: deepseek``) scans two layer stacks,
``decoder/dense_layers`` and ``decoder/moe_layers`` (``STACKED`` is per model),
and its records add the MLA / MoE sizes to ``config`` and say what its users
pass (``user_passes``).
"""

from __future__ import annotations

import json
import os
import pathlib
import platform

HERE = pathlib.Path(__file__).parent
TREES = HERE / "trees"

#: Fixture name -> MaxText ``model_name`` (``configs/models/<model_name>.yml``).
MODELS = {
    "maxtext_llama2_7b": "llama2-7b",
    "maxtext_gemma2_2b": "gemma2-2b",
    "maxtext_mistral_7b": "mistral-7b",
    # DeepSeek (decoder_block "deepseek", MLA attention, MoE): V2-Lite without
    # q_lora (one ``query`` kernel), and DeepSeek-V3 with q_lora (``wq_a`` /
    # ``q_norm`` / ``wq_b``; its sizes all differ, where MaxText's
    # deepseek3-tiny has emb = mlp_dim = moe_mlp_dim and could not tell a
    # wrong axis from the right one).
    "maxtext_deepseek2_16b": "deepseek2-16b",
    "maxtext_deepseek3_671b": "deepseek3-671b",
    # DeepSeek-V3.2: V3 plus a lightning indexer per layer, whose heads are
    # 128 wide where the attention's are 192 (the user passes both).
    "maxtext_deepseek3_2_671b": "deepseek3.2-671b",
    # GPT-OSS (decoder_block "gpt_oss"): biased attention with sinks, and a
    # RoutedMoE named GptOssMlp (no "moe" in its name) whose wo is
    # [experts, mlp, emb]; the scanned block holds two layers (sliding, full).
    "maxtext_gpt_oss_20b": "gpt-oss-20b",
    # Qwen3.5 (decoder_block "qwen3_5"): three gated-DeltaNet layers then one
    # full-attention layer whose query holds each head's query and output
    # gate; a RoutedMoE named routed_experts and a shared expert.
    "maxtext_qwen3_5_35b_a3b": "qwen3.5-35b-a3b",
}
NAMES = tuple(MODELS)

#: Fixture name -> ``{prefix: layer axis}`` of its scanned layer stacks: every
#: leaf under a prefix carries that stack's layer axis at 1 (``param_scan_axis``),
#: norms ``[emb, layers]`` included; the embedding, the final norm and
#: ``logits_dense`` are not stacked. Llama/Gemma2/Mistral scan one stack,
#: ``decoder/layers``; DeepSeek scans two, the first ``first_num_dense_layers``
#: dense layers and the MoE layers after them (logical axis names
#: ``dense_layers`` / ``moe_layers``, the prefixes' last component).
_ONE_STACK = {"decoder/layers": 1}
_DEEPSEEK_STACKS = {"decoder/dense_layers": 1, "decoder/moe_layers": 1}
STACKED = {
    name: (_DEEPSEEK_STACKS if model.startswith("deepseek") else _ONE_STACK) for name, model in MODELS.items()
}

#: What a MaxText DeepSeek user passes to ``adam_mini`` / ``explain``: one glob
#: for both layer stacks (the MLA head sizes are in the kernels' shapes).
USER_PASSES = {
    name: {"blocks": {"stacked": {"decoder/*layers": 1}}} for name, model in MODELS.items()
    if model.startswith("deepseek")
}
# DeepSeek-V3.2's indexer: one head size per tower (its heads 128 wide, the
# latent attention's 192), as the README's "One head_dim per tower" says.
USER_PASSES["maxtext_deepseek3_2_671b"] = {
    "head_dim": {"indexer": 128, "decoder": 192}, "blocks": {"stacked": {"decoder/*layers": 1}},
}

INSTALL = (
    "pip install --no-deps maxtext==0.2.5 && pip install jax==0.11.1 jaxlib==0.11.1 flax==0.12.9 "
    "optax==0.2.8 omegaconf==2.3.1 ml-collections==1.1.0 pydantic==2.13.5 packaging==25.0 aqtp==0.9.0 "
    "qwix==0.1.8 jinja2==3.1.6 sympy==1.14.0 tokamax==0.0.12 pathwaysutils==0.1.11 huggingface-hub==1.32.0 "
    "transformers==5.17.0 grain==0.2.18 drjax==0.2.1 jaxtyping==0.3.11 pillow==12.3.0 tiktoken==0.14.0 "
    "sentencepiece==0.2.2"
)

#: MaxText config fields kept under ``config["native"]``.
NATIVE_FIELDS = (
    "model_name", "decoder_block", "base_emb_dim", "emb_dim", "base_num_query_heads", "num_query_heads",
    "base_num_kv_heads", "num_kv_heads", "head_dim", "base_mlp_dim", "mlp_dim", "base_num_decoder_layers",
    "num_decoder_layers", "vocab_size", "mlp_activations", "logits_via_embedding", "normalization_layer_epsilon",
    "scan_layers", "param_scan_axis", "weight_dtype", "dtype", "fused_qkv", "fused_mlp", "attention",
    "sliding_window_size", "attn_logits_soft_cap", "final_logits_soft_cap", "use_post_attn_norm",
    "use_post_ffw_norm", "rope_max_timescale", "enable_dropout", "max_target_length", "per_device_batch_size",
)

#: More MaxText fields kept under ``config["native"]`` for DeepSeek (MLA and MoE)
#: records only, so the older records stay as they were.
DEEPSEEK_NATIVE_FIELDS = (
    "attention_type", "first_num_dense_layers", "num_experts", "num_experts_per_tok", "shared_experts",
    "base_moe_mlp_dim", "moe_mlp_dim", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
    "v_head_dim", "routed_scaling_factor", "routed_score_func", "routed_bias", "routed_bias_update_rate",
    "sparse_matmul", "megablox", "capacity_factor", "rope_type", "max_position_embeddings",
)

#: Top-level ``config`` fields of a DeepSeek record (MaxText's own names, except
#: ``moe_mlp_dim`` = MaxText's ``moe_mlp_dim``, i.e. ``base_moe_mlp_dim``).
DEEPSEEK_CONFIG_FIELDS = (
    "num_experts", "num_experts_per_tok", "shared_experts", "moe_mlp_dim", "first_num_dense_layers",
    "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
)

NOTES = (
    "Verified in maxtext 0.2.5 source and by recording. Tree = variables['params'] of "
    "jax.eval_shape(TransformerLinen.init) (maxtext_utils.get_abstract_param), LogicallyPartitioned boxes "
    "unboxed; identical paths/shapes to nnx.to_pure_dict(nnx.state(create_nnx_abstract_model(...), nnx.Param)) "
    "(MaxText 0.2.5 models are NNX modules; its pre-train optimizer uses that NNX state). No 'params' prefix "
    "in the recorded paths. "
    "Scanned layers (scan_layers=True, param_scan_axis=1): every leaf under decoder/layers carries the layer "
    "axis at index 1, logical name 'layers' inserted at 1: kernels AND norm scales ([emb] -> [emb, layers], "
    "so for norms the layer axis is the last one). Not stacked: token_embedder/embedding [vocab, emb] "
    "('vocab','embed_vocab'), decoder/decoder_norm/scale [emb] ('norm',), decoder/logits_dense/kernel "
    "[emb, vocab] ('embed_vocab','vocab'). "
    "Attention (layers/attentions.py, DenseGeneral): query kernel [emb, q_heads, head_dim] "
    "('embed_attn','q_heads','kv'), key/value [emb, kv_heads, head_dim] ('embed_attn','kv_heads','kv_head_dim') "
    "(in=emb, out_features_shape=(heads, head_dim), axis=-1); out kernel [heads, head_dim, emb] "
    "('heads','kv','embed_attn') contracting axis=(-2,-1); scanned: query [emb, layers, heads, head_dim], "
    "out [heads, layers, head_dim, emb]. No biases. fused_qkv=False here (fused would be one qkv_proj "
    "[emb, q+2kv heads, head_dim]). "
    "MLP (layers/linears.py MlpBlock, fused_mlp=False): wi_0 (gate, act[0]) and wi_1 (up, 'linear') "
    "[emb, mlp] ('embed','mlp'), wo [mlp, emb] ('mlp','embed'); scanned [emb, layers, mlp] / [mlp, layers, emb]. "
    "Norms: RMSNorm scale, logical ('norm',). "
    "Gemma2 (models/gemma2.py): base_num_decoder_layers=13 = half of the real 26 layers: each scanned "
    "Gemma2DecoderLayer holds a local sliding-window sublayer (AttentionType.LOCAL_SLIDING, window 4096) then "
    "a global one, so stack index i = real layers 2i (local) and 2i+1 (global); module names "
    "{pre_self_attention_norm, self_attention, post_self_attention_norm, pre_ffw_norm, mlp, post_ffw_norm}_"
    "{local,global}; layer axis length 13 while config num_layers=26. logits_via_embedding=true: no "
    "logits_dense, logits use token_embedder/embedding transposed (tied). Gemma2 query kernel axes also "
    "('embed_attn','q_heads','kv'). "
    "Llama2-7b: MHA (kv_heads=32); mistral-7b: GQA (kv_heads=8), same module names as llama2. "
    "Per-leaf logical axis names are in 'logical_axes'; 'stacked' is the BlockRules(stacked=) pattern."
)

DEEPSEEK_NOTES = (
    "Verified in maxtext 0.2.5 source and by recording. Tree = variables['params'] of "
    "jax.eval_shape(TransformerLinen.init) (maxtext_utils.get_abstract_param), LogicallyPartitioned boxes "
    "unboxed; identical paths/shapes to nnx.to_pure_dict(nnx.state(create_nnx_abstract_model(...), nnx.Param)). "
    "No 'params' prefix in the recorded paths. decoder_block='deepseek' (models/deepseek.py, "
    "layers/nnx_decoders.py). "
    "Two scanned stacks (scan_layers=True, param_scan_axis=1): decoder/dense_layers (the first "
    "first_num_dense_layers layers, dense MLP) and decoder/moe_layers (the other num_decoder_layers - "
    "first_num_dense_layers, MoE); every leaf under either carries its layer axis at index 1, logical name "
    "'dense_layers' / 'moe_layers' inserted at 1, norm scales included ([n] -> [n, layers]). 'stacked' lists "
    "both prefixes; a user passes BlockRules(stacked={'decoder/*layers': 1}) ('user_passes'). Not stacked: "
    "token_embedder/embedding [vocab, emb], decoder/decoder_norm/scale [emb], decoder/logits_dense/kernel "
    "[emb, vocab] (logits_via_embedding=false). "
    "MLA attention (layers/attention_mla.py, attention_type='mla'), per layer: qk head dim = qk_nope_head_dim "
    "+ qk_rope_head_dim (config head_dim here; MaxText's own head_dim field, in native, is unused by MLA). "
    "Without q_lora (q_lora_rank=0, deepseek2-16b): self_attention/query/kernel [emb, q_heads, qk_head_dim] "
    "('embed_attn','q_heads','kv'). With q_lora (deepseek3-*): wq_a/kernel [emb, q_lora_rank] "
    "('embed_attn','q_lora_up_proj'), q_norm/scale [q_lora_rank] (RMSNorm on the low-rank query), "
    "wq_b/kernel [q_lora_rank, q_heads, qk_head_dim] ('q_lora','q_heads','kv'); a query head's last axis is "
    "[nope (qk_nope_head_dim) | rope (qk_rope_head_dim)]. wkv_a/kernel [emb, kv_lora_rank + qk_rope_head_dim] "
    "('embed_attn','kv_lora_up_proj'): its outputs are the compressed kv latent (first kv_lora_rank, then "
    "kv_norm) and ONE rope key shared by all heads (last qk_rope_head_dim). kv_norm/scale [kv_lora_rank]. "
    "wkv_b/kernel [kv_lora_rank, kv_heads, qk_nope_head_dim + v_head_dim] ('kv_lora','kv_heads','kv_head_dim'): "
    "per head, the last axis is split at qk_nope_head_dim into the head's key (nope part) and its value "
    "(jnp.split(..., [qk_nope_head_dim], axis=-1)). out/kernel [heads, v_head_dim, emb] ('heads','kv','embed_attn'). "
    "No attention biases. "
    "Dense layers' MLP (linears.MlpBlock): mlp/wi_0, mlp/wi_1 [emb, mlp_dim] ('embed','mlp'), mlp/wo "
    "[mlp_dim, emb]. MoE layers (moe.RoutedAndSharedMoE, module DeepSeekMoeBlock_0): the router "
    "MoeBlock_0/gate/kernel [emb, num_experts] ('embed_router', None) (GateLogit); routed experts as raw "
    "params, no 'kernel' level: MoeBlock_0/wi_0, MoeBlock_0/wi_1 [num_experts, emb, moe_mlp_dim] "
    "('exp','embed_moe','mlp_moe'), MoeBlock_0/wo [num_experts, moe_mlp_dim, emb] ('exp','mlp_moe','embed_moe'); "
    "scanned the layer axis is still at 1: [experts, layers, emb, moe_mlp]. Shared experts "
    "DeepSeekMoeBlock_0/shared_experts/{wi_0,wi_1,wo}/kernel, an MlpBlock of width shared_experts * "
    "moe_mlp_dim ([emb, shared_experts*moe_mlp_dim] / [shared_experts*moe_mlp_dim, emb]). The routing bias "
    "(routed_bias=true in deepseek3-*) is not a parameter: for model names starting deepseek3/deepseek4/kimi-k2 "
    "GateLogit keeps it as a MoEBiasVar (updated by the load-balancing rule, not by the optimizer), so it is "
    "not in the tree; deepseek2-16b has routed_bias=false. Norms: RMSNorm scale, logical ('norm',). "
    "Per-leaf logical axis names are in 'logical_axes'."
)


#: DeepSeek-V3.2's lightning indexer (``use_indexer``), top-level ``config``
#: fields of its record. Per layer, under self_attention/indexer
#: (layers/attention_mla.py ``Indexer``): wq_b/kernel [q_lora_rank,
#: indexer_n_heads, indexer_head_dim] ('q_lora','q_heads','kv'), its heads'
#: queries from the low-rank query; wk/kernel [emb, indexer_head_dim]
#: ('embed_attn','kv'), ONE key shared by every head; k_norm (LayerNorm
#: with bias) [indexer_head_dim]; weights_proj/kernel [emb, indexer_n_heads]
#: ('embed_attn','q_heads'), a weight per head.
INDEXER_FIELDS = ("indexer_n_heads", "indexer_head_dim", "indexer_topk")
INDEXER_NOTES = (
    " DeepSeek-V3.2 (use_indexer=true): every layer's self_attention also holds a lightning indexer "
    "(layers/attention_mla.py Indexer): indexer/wq_b/kernel [q_lora_rank, indexer_n_heads, indexer_head_dim] "
    "('q_lora','q_heads','kv'), reshaped to its heads' queries; indexer/wk/kernel [emb, indexer_head_dim] "
    "('embed_attn','kv'), one key shared by every head; indexer/k_norm (LayerNorm, scale and bias) "
    "[indexer_head_dim]; indexer/weights_proj/kernel [emb, indexer_n_heads] ('embed_attn','q_heads'), one "
    "weight per head. Its heads are indexer_head_dim (128) wide, the latent attention's 192: a user passes "
    "head_dim={'indexer': 128, 'decoder': 192} ('user_passes')."
)

#: Top-level ``config`` fields of a GPT-OSS record (its experts are
#: ``mlp_dim`` wide: ``RoutedMoE(intermediate_dim=config.mlp_dim)``), and
#: more MaxText fields kept under ``config["native"]``.
GPT_OSS_CONFIG_FIELDS = ("num_experts", "num_experts_per_tok")
GPT_OSS_NATIVE_FIELDS = (
    "num_experts", "num_experts_per_tok", "attention_bias", "mlp_bias", "inhomogeneous_layer_cycle_interval",
    "sparse_matmul", "megablox", "routed_bias", "norm_topk_prob",
)

GPT_OSS_NOTES = (
    "Verified in maxtext 0.2.5 source and by recording. Tree = variables['params'] of "
    "jax.eval_shape(TransformerLinen.init) (maxtext_utils.get_abstract_param), LogicallyPartitioned boxes "
    "unboxed; identical paths/shapes to nnx.to_pure_dict(nnx.state(create_nnx_abstract_model(...), nnx.Param)). "
    "decoder_block='gpt_oss' (models/gpt_oss.py). One scanned stack, decoder/layers (param_scan_axis=1, "
    "num_decoder_layers / inhomogeneous_layer_cycle_interval = 12 entries), each a GptOssScannableBlock of "
    "inhomogeneous_layer_cycle_interval (2) GptOssDecoderLayers layers_0 (sliding-window attention) and "
    "layers_1 (full attention); the layer axis is at 1 in every leaf under decoder/layers, norm scales and "
    "biases included. "
    "GptOssAttention (layers/attentions.py Attention, use_bias_in_projections=attention_bias=True): query "
    "[emb, q_heads, head_dim], key/value [emb, kv_heads, head_dim], out [heads, head_dim, emb], each with a "
    "bias (query/bias [q_heads, head_dim], out/bias [emb]); sinks [q_heads] (one learned logit per head, "
    "nnx.Param). "
    "GptOssMlp (layers/moe.py RoutedMoE, intermediate_dim=mlp_dim): router gate/kernel [emb, num_experts] "
    "with gate/bias [num_experts]; experts as raw params: wi_0, wi_1 [num_experts, emb, mlp] "
    "('exp','embed_moe','mlp_moe'), wo [num_experts, mlp, emb] ('exp','mlp_moe','embed_moe'), and (mlp_bias) "
    "wi_0_bias, wi_1_bias [num_experts, mlp], wo_bias [num_experts, emb]. Scanned: [experts, layers, in, out]. "
    "gpt-oss-20b's mlp_dim equals emb (2880). Norms: pre_self_attention_layer_norm and "
    "post_self_attention_layer_norm RMSNorm scales [emb]. Not stacked: token_embedder/embedding [vocab, emb], "
    "decoder/decoder_norm/scale [emb], decoder/logits_dense/kernel [emb, vocab] (logits_via_embedding=false). "
    "Per-leaf logical axis names are in 'logical_axes'."
)


#: Top-level ``config`` fields of a Qwen3.5 record, and more MaxText fields
#: kept under ``config["native"]``.
QWEN3_5_CONFIG_FIELDS = (
    "num_experts", "num_experts_per_tok", "moe_mlp_dim", "shared_experts", "inhomogeneous_layer_cycle_interval",
    "gdn_num_key_heads", "gdn_num_value_heads", "gdn_key_head_dim", "gdn_value_head_dim", "gdn_conv_kernel_dim",
)
QWEN3_5_NATIVE_FIELDS = QWEN3_5_CONFIG_FIELDS + (
    "base_moe_mlp_dim", "partial_rotary_factor", "norm_topk_prob", "sparse_matmul", "megablox",
)

QWEN3_5_NOTES = (
    "Verified in maxtext 0.2.5 source and by recording. Tree = variables['params'] of "
    "jax.eval_shape(TransformerLinen.init) (maxtext_utils.get_abstract_param), LogicallyPartitioned boxes "
    "unboxed; identical paths/shapes to nnx.to_pure_dict(nnx.state(create_nnx_abstract_model(...), nnx.Param)). "
    "decoder_block='qwen3_5' (models/qwen3_5.py, classes from models/qwen3.py). One scanned stack, "
    "decoder/layers (param_scan_axis=1, num_decoder_layers / inhomogeneous_layer_cycle_interval = 10 entries), "
    "each a Qwen3_5ScannableBlock of layer_0..layer_3: layer_{0,1,2} gated DeltaNet (linear attention), "
    "layer_3 full attention ((i + 1) % 4 == 0). "
    "Gated DeltaNet (Qwen3NextGatedDeltaNet), under attention/: in_proj_qkvz/kernel [emb, 2*key_dim + "
    "2*value_dim] (key_dim = gdn_num_key_heads * gdn_key_head_dim, value_dim = gdn_num_value_heads * "
    "gdn_value_head_dim; per key head q, k, v, z), in_proj_ba/kernel [emb, 2 * gdn_num_value_heads], "
    "conv1d/kernel [k, 1, conv_dim] depthwise (feature_group_count = conv_dim = 2*key_dim + value_dim), "
    "A_log [gdn_num_value_heads], dt_bias [gdn_num_value_heads], norm/rms_norm/scale [gdn_value_head_dim], "
    "out_proj/kernel [value_dim, emb]. "
    "Full attention (Qwen3NextFullAttention, layers/attentions.py Attention with is_qwen3_hybrid), under "
    "attention/attention/: query/kernel [emb, q_heads, 2 * head_dim] ('embed_attn','q_heads','kv'), each "
    "head's last axis its query then its output gate (jnp.split(query, 2, axis=-1); the gate, reshaped to "
    "[q_heads * head_dim], is a sigmoid over the attention's output neurons); key/value [emb, kv_heads, "
    "head_dim]; out [q_heads * head_dim, emb] (2-D here); query_norm/key_norm scales [head_dim]. No biases. "
    "MoE (Qwen3NextSparseMoeBlock) under mlp/: routed_experts (moe.RoutedMoE) gate/kernel [emb, num_experts], "
    "wi_0/wi_1 [num_experts, emb, moe_mlp_dim], wo [num_experts, moe_mlp_dim, emb] (raw params, no 'kernel'); "
    "shared_expert (MlpBlock, intermediate_dim=moe_mlp_dim) wi_0/wi_1/wo kernels; shared_expert_gate/kernel "
    "[emb, 1]. Norms: input_layernorm, post_attention_layernorm scales [emb]. Not stacked: "
    "token_embedder/embedding [vocab, emb], decoder/decoder_norm/scale, decoder/logits_dense/kernel [emb, vocab]. "
    "Per-leaf logical axis names are in 'logical_axes'."
)


def _jsonable(value):
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if hasattr(value, "value") and isinstance(value.value, (str, int)):  # enums
    return value.value
  try:
    import numpy as np  # pylint: disable=import-outside-toplevel

    return str(np.dtype(value))
  except TypeError:
    return str(value)


def _model_name(name: str) -> str:
  if name in MODELS:
    return MODELS[name]
  if name in MODELS.values():
    return name
  raise ValueError(f"unknown MaxText model {name!r}; known: {sorted(MODELS)}")


def _fixture_name(name: str) -> str:
  return name if name in MODELS else next(k for k, v in MODELS.items() if v == name)


def _argv(model_name: str) -> list:
  import maxtext  # pylint: disable=import-outside-toplevel

  base = os.path.join(os.path.dirname(maxtext.__file__), "configs", "base.yml")
  return [
      None, base, f"model_name={model_name}", "scan_layers=True", "attention=dot_product",
      "skip_jax_distributed_system=True", "hardware=cpu", "enable_checkpointing=False", "run_name=record",
      "base_output_directory=/tmp/maxtext_record", "per_device_batch_size=1", "max_target_length=16",
  ]


def _setup(name: str):
  """MaxText's config and a 1-device CPU mesh for ``name``."""
  import jax  # pylint: disable=import-outside-toplevel
  from maxtext.configs import pyconfig  # pylint: disable=import-outside-toplevel
  from maxtext.utils import maxtext_utils  # pylint: disable=import-outside-toplevel

  model_name = _model_name(name)
  config = pyconfig.initialize(_argv(model_name))
  devices = jax.devices("cpu")[:1]
  mesh = jax.sharding.Mesh(maxtext_utils.create_device_mesh(config, devices), config.mesh_axes)
  return model_name, config, mesh


def _linen_params(config, mesh):
  """``{path: (ShapeDtypeStruct, logical names)}`` from jax.eval_shape(model.init)['params']."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from maxtext.utils import maxtext_utils, model_creation_utils  # pylint: disable=import-outside-toplevel

  model = model_creation_utils.from_config(config, mesh=mesh)  # TransformerLinen, model_mode train
  boxed = maxtext_utils.get_abstract_param(model, config)["params"]
  names = {
      tuple(k.key for k in path): tuple(leaf.names)
      for path, leaf in jax.tree_util.tree_flatten_with_path(
          boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
      )[0]
      if isinstance(leaf, nn.LogicallyPartitioned)
  }
  params = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype), nn.meta.unbox(boxed)
  )
  return params, names


def _nnx_params(config, mesh):
  """The pure-NNX tree MaxText's pre-train loop optimizes: ``{path: shape}``."""
  import jax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from maxtext.utils import model_creation_utils  # pylint: disable=import-outside-toplevel

  _, model = model_creation_utils.create_nnx_abstract_model(config, mesh)
  state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return {
      tuple(k.key for k in path): (tuple(x.shape), str(x.dtype))
      for path, x in jax.tree_util.tree_flatten_with_path(state)[0]
  }


def _is_deepseek(config) -> bool:
  return str(_jsonable(config.decoder_block)) == "deepseek"


def _is_gpt_oss(config) -> bool:
  return str(_jsonable(config.decoder_block)) == "gpt_oss"


def _is_qwen3_5(config) -> bool:
  return str(_jsonable(config.decoder_block)) == "qwen3_5"


def _config_dict(config) -> dict:
  layers = int(config.num_decoder_layers)
  if str(_jsonable(config.decoder_block)) == "gemma2":
    layers *= 2  # one scanned Gemma2DecoderLayer = a local and a global layer
  deepseek = _is_deepseek(config)
  # MLA: a query/key head is qk_nope_head_dim + qk_rope_head_dim wide (values
  # v_head_dim); MaxText's head_dim field is not used by its MLA layers.
  head_dim = int(config.qk_nope_head_dim) + int(config.qk_rope_head_dim) if deepseek else int(config.head_dim)
  out = {
      "vocab_size": int(config.vocab_size),
      "d_model": int(config.emb_dim),
      "num_layers": layers,
      "num_heads": int(config.num_query_heads),
      "num_kv_heads": int(config.num_kv_heads),
      "head_dim": head_dim,
      "mlp_dim": int(config.mlp_dim),
      "tied_embeddings": bool(config.logits_via_embedding),
      "scanned": bool(config.scan_layers),
      "layer_axis": int(config.param_scan_axis) if config.scan_layers else None,
  }
  native_fields = NATIVE_FIELDS
  if deepseek:
    out.update({f: _jsonable(getattr(config, f, None)) for f in DEEPSEEK_CONFIG_FIELDS})
    native_fields += DEEPSEEK_NATIVE_FIELDS
    if getattr(config, "use_indexer", False):
      out.update({f: _jsonable(getattr(config, f, None)) for f in INDEXER_FIELDS})
      native_fields += ("use_indexer",) + INDEXER_FIELDS
  if _is_gpt_oss(config):
    out.update({f: _jsonable(getattr(config, f, None)) for f in GPT_OSS_CONFIG_FIELDS})
    native_fields += GPT_OSS_NATIVE_FIELDS
  if _is_qwen3_5(config):
    out.update({f: _jsonable(getattr(config, f, None)) for f in QWEN3_5_CONFIG_FIELDS})
    native_fields += QWEN3_5_NATIVE_FIELDS
  out["native"] = {f: _jsonable(getattr(config, f, None)) for f in native_fields}
  return out


def build(name: str):
  """``(abstract_params, config_dict)``: MaxText's scanned ``'params'`` tree for ``name``.

  ``name`` is a fixture name (``maxtext_llama2_7b``) or a MaxText ``model_name``
  (``llama2-7b``). Leaves are ``jax.ShapeDtypeStruct``; nested plain dicts.
  """
  _, config, mesh = _setup(name)
  params, _ = _linen_params(config, mesh)
  return params, _config_dict(config)


def record(name: str) -> dict:
  from importlib import metadata  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel

  model_name, config, mesh = _setup(name)
  params, names = _linen_params(config, mesh)
  leaves = [
      {"path": [k.key for k in path], "shape": list(x.shape), "dtype": str(x.dtype)}
      for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
  ]
  linen = {tuple(leaf["path"]): (tuple(leaf["shape"]), leaf["dtype"]) for leaf in leaves}
  nnx_tree = _nnx_params(config, mesh)
  if linen != nnx_tree:
    raise AssertionError(f"{name}: Linen init and NNX Param state differ:\n{linen}\n{nnx_tree}")
  stacks = STACKED[_fixture_name(name)]
  layer_names = {prefix.rsplit("/", 1)[-1] for prefix in stacks}  # 'layers', 'dense_layers', 'moe_layers'
  stack_sizes = {}
  for leaf in leaves:  # each stacked layer axis is where MaxText names it
    axes = names.get(tuple(leaf["path"]))
    path = "/".join(leaf["path"])
    prefix = next((p for p in stacks if path.startswith(p + "/")), None)
    if axes is None or len(axes) != len(leaf["shape"]):
      # A bare nnx.Param (Qwen3.5's A_log) has no logical names; its gated
      # norm's scale names only the layer axis it was stacked with.
      continue
    assert layer_names.isdisjoint(axes) == (prefix is None), (leaf, axes)
    if prefix is not None:
      assert axes.index(prefix.rsplit("/", 1)[-1]) == stacks[prefix], (leaf, axes)
      stack_sizes.setdefault(prefix, set()).add(leaf["shape"][stacks[prefix]])
  for leaf in leaves:  # an unnamed leaf under a stack has the stack's length there
    path = "/".join(leaf["path"])
    prefix = next((p for p in stacks if path.startswith(p + "/")), None)
    axes = names.get(tuple(leaf["path"]))
    if (axes is None or len(axes) != len(leaf["shape"])) and prefix is not None:
      assert {leaf["shape"][stacks[prefix]]} == stack_sizes[prefix], (leaf, stack_sizes)
  versions = {p: metadata.version(p) for p in ("maxtext", "jax", "jaxlib", "flax")}
  fixture = _fixture_name(name)
  return {
      "name": fixture,
      "library": "maxtext",
      "library_version": versions["maxtext"],
      "recorded_with": (
          f"python {platform.python_version()}, jax {versions['jax']}, jaxlib {versions['jaxlib']}, "
          f"flax {versions['flax']}, CPU, 1-device mesh; {INSTALL}"
      ),
      "model": (
          "maxtext.utils.model_creation_utils.from_config(config, mesh=mesh)  # TransformerLinen "
          "(models.transformer_as_linen), model_mode='train'; config = maxtext.configs.pyconfig.initialize("
          f"[None, 'maxtext/configs/base.yml', 'model_name={model_name}', 'scan_layers=True', "
          "'attention=dot_product', 'skip_jax_distributed_system=True', 'hardware=cpu', "
          "'per_device_batch_size=1', 'max_target_length=16', ...])"
      ),
      "how": (
          "maxtext_utils.get_abstract_param(model, config)['params'], i.e. jax.eval_shape(model.init, "
          "{'params','dropout','aqt': key}, ones[1,16] int32 tokens, ones[1,16] int32 positions); "
          "flax.linen.meta.unbox; checked equal to nnx.to_pure_dict(nnx.state("
          "model_creation_utils.create_nnx_abstract_model(config, mesh)[1], nnx.Param))"
      ),
      "config": _config_dict(config),
      "stacked": dict(stacks),
      **({"user_passes": USER_PASSES[fixture]} if fixture in USER_PASSES else {}),
      "logical_axes": {
          "/".join(leaf["path"]): list(names[tuple(leaf["path"])]) if tuple(leaf["path"]) in names else None
          for leaf in leaves
      },
      "notes": (DEEPSEEK_NOTES + (INDEXER_NOTES if getattr(config, "use_indexer", False) else "")
                if _is_deepseek(config) else GPT_OSS_NOTES if _is_gpt_oss(config)
                else QWEN3_5_NOTES if _is_qwen3_5(config) else NOTES),
      "leaves": leaves,
  }


def _dumps(rec: dict) -> str:
  """Pretty JSON with one leaf per line (small, diff-friendly)."""
  head = json.dumps({k: v for k, v in rec.items() if k != "leaves"}, indent=1)
  leaves = ",\n".join("  " + json.dumps(leaf) for leaf in rec["leaves"])
  return head[:-2] + ',\n "leaves": [\n' + leaves + "\n ]\n}\n"


def main(names=NAMES) -> None:
  TREES.mkdir(exist_ok=True)
  for name in names:
    rec = record(name)
    out = TREES / f"{rec['name']}.json"
    out.write_text(_dumps(rec))
    print(f"wrote {out} ({len(rec['leaves'])} leaves)")


if __name__ == "__main__":
  import sys  # pylint: disable=import-outside-toplevel

  main(tuple(sys.argv[1:]) or NAMES)
