"""Record Google's ``tunix`` (PyPI ``google-tunix``) Flax NNX model trees.

Paths + shapes only; see ``FORMAT.md`` beside this file for the JSON format.
Nothing is downloaded: every model is the library's own ``nnx.Module`` built
from its built-in ``ModelConfig`` classmethod (no checkpoint) under
``nnx.eval_shape``, so parameters are only ever abstract. The recorded tree is
``nnx.state(model, nnx.Param)`` as a pure dict (``State.to_pure_dict()``),
the tree ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` hands optax, less the
``.value`` that ends each of its paths. ``tunix`` is imported only inside
functions, so this module is importable without it.

Install (Python 3.11; tunix's metadata pulls TensorFlow Datasets, grain and
more that building its models does not import, so it goes in with
``--no-deps`` plus what ``tunix.models.*.model`` imports)::

    python3 -m venv venv && . venv/bin/activate
    pip install <INSTALL_WITH_DEPS below> && pip install --no-deps "google-tunix==0.1.7"

Run: ``python tests/third_party/record_tunix.py`` (writes ``trees/tunix_*.json``).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import platform

LIBRARY = "tunix"
INSTALL_WITH_DEPS = (
  "jax==0.10.2",
  "flax==0.12.8",
  "optax==0.2.8",
  "jaxtyping",
  "google-metrax",
  "tqdm",
  "huggingface_hub",
  "sentencepiece",
  "pillow",
  "transformers==4.57.6",
  "perfetto",
  "pandas",
  "einops",
)
PIP_INSTALL = (
  "pip install "
  + " ".join(f'"{p}"' for p in INSTALL_WITH_DEPS)
  + ' && pip install --no-deps "google-tunix==0.1.7"'
)

# name -> (tunix.models.<module>.model, ModelConfig classmethod, model class)
MODELS = {
  "tunix_llama3_2_1b": ("llama3", "llama3p2_1b", "Llama3"),
  "tunix_qwen2_5_0_5b": ("qwen2", "qwen2p5_0p5b", "Qwen2"),
  "tunix_qwen3_0_6b": ("qwen3", "qwen3_0p6b", "Qwen3"),
  "tunix_qwen3_30b_a3b": ("qwen3", "qwen3_30b_a3b", "Qwen3"),
  "tunix_gemma2_2b": ("gemma", "gemma2_2b", "Gemma"),
  "tunix_gemma3_270m": ("gemma3", "gemma3_270m", "Gemma3"),
  "tunix_gemma4_e2b": ("gemma4", "gemma4_e2b", "Gemma4"),
  "tunix_gemma4_26b_a4b": ("gemma4", "gemma4_26b_a4b", "Gemma4"),
}

# The families whose users pass the head counts: Llama/Qwen store query/key/
# value as [embed, heads, head_dim] Einsum weights under plain names
# (q_proj/w), which could as well be heads-first. Gemma's are named
# (q_einsum, kv_einsum, k_einsum) and need nothing; its global layers' keys
# are wider than head_dim (Gemma 4: global_key_size), so it passes no head_dim.
_PASS_HEAD_COUNTS = frozenset({"llama3", "qwen2", "qwen3"})

_NOTES = {
  "llama3": (
    "Einsum modules hold a param 'w': attn/q_proj/w [D, N, H] ('BTD,DNH->BTNH'), k_proj/w and "
    "v_proj/w [D, K, H] ('BSD,DKH->BSKH'), o_proj/w [N, H, D] ('BTNH,NHD->BTD'); the MLP is "
    "nnx.Linear gate_proj/up_proj/down_proj (kernel [in, out]); RMSNorm param 'w'; "
    "embedder/input_embedding [V, D]; weight_tying -> no lm_head (else lm_head/w [D, V])."
  ),
  "qwen2": (
    "As Llama 3, plus attn/q_bias [N*H], k_bias and v_bias [K*H] params (flat)."
  ),
  "qwen3": (
    "As Llama 3, plus attn/q_norm/w and k_norm/w [H]. With num_experts (MoE) the MLP's "
    "gate_proj/up_proj are params [E, D, F] and down_proj [E, F, D] directly on mlp (no "
    "'kernel'), applied per expert; mlp/router is an nnx.Linear [D, E]. Untied: lm_head/w [D, V]."
  ),
  "gemma": (
    "As DeepMind's gemma: attn/q_einsum/w [N, D, H], kv_einsum/w [2, K, D, H] (qkv_einsum/w "
    "[3, N, D, H] when K == N), attn_vec_einsum/w [N, H, D]; the MLP is nnx.Linear "
    "gate_proj/up_proj/down_proj; RMSNorm 'scale'; tied embedder/input_embedding [V, D]."
  ),
  "gemma3": (
    "As tunix's Gemma, plus attn/_query_norm/scale and _key_norm/scale [H]. Text only "
    "(vision_config=None)."
  ),
  "gemma4": (
    "As tunix's Gemma 3, plus: global layers use head size global_key_size (q_einsum "
    "[N, D, 512], attn_vec_einsum [N, 512, D]) and, with num_global_kv_heads (26B, 31B), "
    "share keys and values: attn/k_einsum/w [K_global, D, 512] ('BSD,KDH->BSKH') instead of "
    "kv_einsum; E2B/E4B: embedder/per_layer_input_embedding [V, L, P] (a table), "
    "embedder/per_layer_model_projection/w [D, L, P] ('BTD,DNP->BTNP'), per layer "
    "per_layer_input_gate/w [D, P], per_layer_projection/w [P, D]; 26B-A4B: a dense MLP and "
    "a mixture of experts per layer, moe/gating_einsum [E, 2, F, D] (gate|up, applied as "
    "ragged_dot with [E, D, 2F] after a transpose), moe/linear [E, F, D], moe/router_logits "
    "[D, E], moe/per_expert_scale [E], moe/router_scale [D]; layer/skip_scale [1]."
  ),
}


def _jsonable(obj):
  if isinstance(obj, enum.Enum):
    return f"{type(obj).__name__}.{obj.name}"
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if obj is None or isinstance(obj, (bool, int, float, str)):
    return obj
  return repr(obj)


def _native_config(cfg) -> dict:
  return {
    f.name: _jsonable(getattr(cfg, f.name))
    for f in dataclasses.fields(cfg)
    if not f.name.startswith("shd_") and f.name not in ("remat_config",)
  }


def _standard_config(family: str, cfg) -> dict:
  gemma = family.startswith("gemma")
  out = dict(
    vocab_size=int(cfg.num_embed if gemma else cfg.vocab_size),
    d_model=int(cfg.embed_dim),
    num_layers=int(cfg.num_layers),
    num_heads=int(cfg.num_heads),
    num_kv_heads=int(cfg.num_kv_heads),
    head_dim=int(cfg.head_dim),
    mlp_dim=int(cfg.hidden_dim),
    tied_embeddings=bool(
      True if gemma else getattr(cfg, "weight_tying", getattr(cfg, "use_tied_embedding", True))
    ),
    scanned=False,
    layer_axis=None,
  )
  experts = getattr(cfg, "num_experts", None)
  if experts:
    out["num_experts"] = int(experts)
    if family == "gemma4":  # a dense MLP beside the experts, whose own width differs
      out["expert_dim"] = int(cfg.expert_dim)
  return out


def _user_passes(family: str, config: dict) -> dict:
  if family in _PASS_HEAD_COUNTS:
    return {"blocks": {"num_heads": config["num_heads"], "num_kv_heads": config["num_kv_heads"]}}
  return {}


def _config(name: str):
  import importlib

  family, config_name, _ = MODELS[name]
  module = importlib.import_module(f"tunix.models.{family}.model")
  return module, getattr(module.ModelConfig, config_name)()


def build(name: str):
  """Return ``(abstract_params, config_dict)`` for fixture ``name``: the pure
  dict of ``nnx.state(model, nnx.Param)`` of the model built under
  ``nnx.eval_shape`` (``jax.ShapeDtypeStruct`` leaves)."""
  from flax import nnx

  family, _, class_name = MODELS[name]
  module, cfg = _config(name)
  model = nnx.eval_shape(lambda: getattr(module, class_name)(cfg, rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param).to_pure_dict()
  config = _standard_config(family, cfg)
  config["native"] = _native_config(cfg)
  return params, config


def _key_to_json(k):
  import jax

  if isinstance(k, jax.tree_util.DictKey):
    return k.key if isinstance(k.key, (str, int)) else str(k.key)
  if isinstance(k, jax.tree_util.SequenceKey):
    return int(k.idx)
  if isinstance(k, jax.tree_util.GetAttrKey):
    return k.name
  return str(k)


def record(name: str) -> dict:
  from importlib.metadata import version

  import jax

  params, config = build(name)
  family, config_name, class_name = MODELS[name]
  leaves = [
    {"path": [_key_to_json(k) for k in path], "shape": list(x.shape), "dtype": str(x.dtype)}
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
  ]
  return {
    "name": name,
    "library": LIBRARY,
    "library_version": version("google-tunix"),
    "recorded_with": (
      f"python {platform.python_version()}, jax {jax.__version__}, flax {version('flax')}, "
      f"CPU; {PIP_INSTALL}"
    ),
    "model": f"tunix.models.{family}.model.{class_name}(ModelConfig.{config_name}(), rngs=nnx.Rngs(0))",
    "how": (
      "model = nnx.eval_shape(lambda: <model>); "
      "tree = nnx.state(model, nnx.Param).to_pure_dict()"
    ),
    "notes": _NOTES[family],
    "user_passes": _user_passes(family, config),
    "config": config,
    "leaves": leaves,
  }


def main() -> None:
  out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trees")
  for name in MODELS:
    rec = record(name)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
      json.dump(rec, f, indent=1)
      f.write("\n")
    print(name, len(rec["leaves"]), "leaves")


if __name__ == "__main__":
  main()
