"""Record Physical Intelligence's ``openpi`` (pi0) parameter trees, the ones its optimizer sees.

Paths + shapes only; see ``FORMAT.md`` beside this file for the JSON format.
Nothing is downloaded and no weight is allocated: the tree is built exactly as
openpi's ``scripts/train.py`` ``init_train_state()`` builds it (train.py:90-114),
under ``jax.eval_shape``::

    model = config.model.create(rng)          # Pi0Config(...).create -> Pi0 (nnx)
    params = nnx.state(model)
    params = state_map(params, freeze_filter, <cast to bfloat16>)
    tx.init(params.filter(trainable_filter))  # trainable_filter = All(Param, Not(freeze_filter))

and recorded as ``params.filter(trainable_filter).to_pure_dict()`` (the same
paths less the ``.value`` that ends each in the ``nnx.State``). The freeze
filter is the one ``training/config.py`` gives the config: ``nnx.Nothing`` for
full fine-tuning (``pi0_aloha``, ``pi0_libero``, ...), and
``Pi0Config(...).get_freeze_filter()`` for the LoRA config
(``pi0_libero_low_mem_finetune``): the whole ``llm`` frozen except its
``lora`` factors; SigLIP and the action projections stay trainable.

openpi is not on PyPI and pins jax 0.5.3 / flax 0.10.2; it is imported from a
source checkout (``OPENPI_SRC``: the repository root, its ``src/`` is put on
``sys.path``) at commit ``OPENPI_COMMIT``. The model code runs unchanged under
jax 0.10.2 / flax 0.12.8; only imports that building the model never executes
are stubbed (``torch``: type unions ``jax.Array | torch.Tensor`` and the
PyTorch image resize; ``safetensors``: the PyTorch weight loader;
``openpi.models_pytorch.pi0_pytorch``: the PyTorch port), and openpi's
``nnx_utils.state_map`` (written for flax 0.10, whose ``flat_state()`` gave
paths) is re-done here with flax 0.12's API, the same logic.

Install (Python 3.11, CPU)::

    python3 -m venv venv && . venv/bin/activate
    <PIP_INSTALL below>
    git clone https://github.com/Physical-Intelligence/openpi && git -C openpi checkout <OPENPI_COMMIT>

Run: ``OPENPI_SRC=openpi python tests/third_party/record_openpi.py``
(writes ``trees/openpi_*.json``). ``openpi`` and ``jax`` are imported only
inside functions, so this module is importable without them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import types

LIBRARY = "openpi"
OPENPI_COMMIT = "15a9616a00943ada6c20a0f158e3adb39df2ccac"  # github.com/Physical-Intelligence/openpi, 2026-06-16
#: The venv the trees were recorded with (``pip freeze``; openpi itself from source, above).
PINS = (
  "absl-py==2.5.1", "aiofiles==25.1.0", "attrs==26.1.0", "augmax==0.4.1", "beartype==0.19.0",
  "chex==0.1.92", "dm-tree==0.1.10", "einops==0.8.2", "etils==1.15.0", "flax==0.12.8",
  "fsspec==2026.9.0", "humanize==4.17.0", "jax==0.10.2", "jaxlib==0.10.2", "jaxtyping==0.2.36",
  "markdown-it-py==4.3.0", "mdurl==0.1.2", "ml_collections==1.1.0", "ml_dtypes==0.7.0",
  "msgpack==1.2.4", "numpy==2.4.6", "opt_einsum==3.4.0", "optax==0.2.8",
  "orbax-checkpoint==0.12.8", "prometheus_client==0.26.0", "protobuf==7.36.2", "psutil==7.2.2",
  "Pygments==2.21.0", "PyYAML==6.0.4", "rich==15.0.0", "scipy==1.17.1", "simplejson==4.3.0",
  "tensorstore==0.1.86", "toolz==1.2.0", "treescope==0.1.10", "typing_extensions==4.16.0",
  "uvloop==0.23.0", "wrapt==2.5.2", "zipp==4.1.2",
)
PIP_INSTALL = "pip install " + " ".join(f'"{p}"' for p in PINS)

# name -> (Pi0Config keyword arguments, openpi TrainConfigs that train this tree)
MODELS = {
  "openpi_pi0": ({}, "pi0_aloha, pi0_libero, pi0_aloha_towel, ... (full fine-tuning, freeze_filter nnx.Nothing)"),
  "openpi_pi0_lora": (
    {"paligemma_variant": "gemma_2b_lora", "action_expert_variant": "gemma_300m_lora"},
    "pi0_libero_low_mem_finetune (freeze_filter=Pi0Config(...).get_freeze_filter())",
  ),
}

#: Each scanned stack's path prefix and its layer axis: gemma.py's nn.scan over
#: the decoder layers (both experts' leaves of a layer live in one Block) and
#: siglip.py's nn.scan over the encoder blocks, both variable_axes={"params": 0}.
STACKED = {"PaliGemma/llm/layers": 0, "PaliGemma/img/Transformer/encoderblock": 0}

#: What a user passes optax_mini: the two stacks. No head_dim: every attention
#: kernel here is 3-D/4-D with its heads on their own axis (SigLIP's flax
#: MultiHeadDotProductAttention [D, N, H], Gemma's einsums [N, D, H]).
USER_PASSES = {"blocks": {"stacked": dict(STACKED)}}

_NOTES = (
  "Pi0 (src/openpi/models/pi0.py): PaliGemma = {llm: gemma.Module(configs=[paligemma, action expert]), "
  "img: siglip So400m/14 (hard-coded, pool_type='none', scan=True, num_classes=paligemma width)} wrapped "
  "with nnx_bridge.ToNNX, plus nnx.Linear action_in_proj [action_dim, W_e], state_proj [action_dim, W_e], "
  "action_time_mlp_in [2 W_e, W_e], action_time_mlp_out [W_e, W_e], action_out_proj [W_e, action_dim] "
  "(kernel + bias; W_e = the action expert's width). The decoder (gemma.py) is one nn.scan over depth "
  "layers (layer axis 0) holding both experts: expert 0 (PaliGemma's Gemma 2B) under attn/q_einsum, "
  "attn/kv_einsum, attn/attn_vec_einsum, mlp, pre_attention_norm, pre_ffw_norm, final_norm; expert 1 (the "
  "action expert, Gemma 300M) under the same names + '_1' (q_einsum_1, kv_einsum_1, attn_vec_einsum_1, "
  "mlp_1, pre_attention_norm_1, pre_ffw_norm_1, final_norm_1). Einsum params 'w': q_einsum [N, D, H] "
  "('BTD,NDH->BTNH'), kv_einsum [2, K, D, H] ('BSD,2KDH->2BSKH', k then v), attn_vec_einsum [N, H, D] "
  "('BTNH,NHD->BTD'); mlp (lora.FeedForward) gating_einsum [2, D, F] (gate | up, x @ w[0], x @ w[1]), "
  "linear [F, D]; RMSNorm 'scale' [D]; embedder/input_embedding [V, D] (expert 0 only, tied). LoRA "
  "(lora.py, gemma_*_lora: attn and ffn, rank 16 for gemma_2b_lora, 32 for gemma_300m_lora): an einsum's "
  "lora_a is its w with the LAST axis replaced by the rank, lora_b with the SECOND-TO-LAST replaced "
  "(LoRAConfig.axes=(-2, -1)); the einsum keeps the other axes as batch axes: q 'BTD,NDL->BTNL' then "
  "'BTNL,NLH->BTNH' (lora_a [N, D, r], lora_b [N, r, H]); kv 'BSD,2KDL->2BSKL' then '2BSKL,2KLH->2BSKH' "
  "(lora_a [2, K, D, r], lora_b [2, K, r, H]); attn_vec 'BTNH,NHL->BTL' then 'BTL,NLD->BTD' (lora_a "
  "[N, H, r], lora_b [N, r, D]: N is contracted in both); mlp gating_einsum_lora_a [2, D, r], "
  "gating_einsum_lora_b [2, r, F] (gate and up adapted separately: x @ a[0] @ b[0], x @ a[1] @ b[1]), "
  "linear_lora_a [F, r], linear_lora_b [r, D]. SigLIP (siglip.py): embedding Conv [14, 14, 3, 1152] + "
  "bias, pos_embedding [1, 256, 1152] (learned, one row per patch, no class token), "
  "Transformer/encoderblock (nn.scan, layer axis 0): LayerNorm_0/1 scale+bias, "
  "MultiHeadDotProductAttention_0 query/key/value kernel [D, N, H] + bias [N, H], out kernel [N, H, D] + "
  "bias [D], MlpBlock_0 Dense_0 [D, mlp] / Dense_1 [mlp, D] + biases; Transformer/encoder_norm; head "
  "Dense [1152, 2048] (into the decoder's width). The LoRA tree is what the freeze filter leaves "
  "trainable: every llm leaf whose path has 'lora' (no base einsum, no norm, no embedding), all of SigLIP "
  "and the action projections. Frozen leaves (cast to bfloat16 by train.py) are not in the tree."
)


def _jsonable(obj):
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)
            if f.name != "init_fn"}
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if obj is None or isinstance(obj, (bool, int, float, str)):
    return obj
  return repr(obj)


def _stub(name: str, **attrs) -> types.ModuleType:
  module = types.ModuleType(name)
  module.__dict__.update(attrs)
  sys.modules[name] = module
  return module


def _import_openpi():
  """Imports openpi's JAX model code (from ``OPENPI_SRC`` unless installed)."""
  if "openpi.models.pi0_config" in sys.modules:
    return sys.modules["openpi.models.pi0_config"]
  src = os.environ.get("OPENPI_SRC")
  if src:
    sys.path.insert(0, os.path.join(src, "src"))
  # Imported at module level by openpi but never run when the JAX model is built.
  if "torch" not in sys.modules:
    class _Dtype:
      pass

    torch = _stub("torch", Tensor=type("Tensor", (), {}), uint8=_Dtype(), float32=_Dtype(), bfloat16=_Dtype())
    torch.nn = _stub("torch.nn", Module=type("Module", (), {}))
    torch.nn.functional = _stub("torch.nn.functional")
  if "safetensors" not in sys.modules:
    _stub("safetensors")
  _stub("openpi.models_pytorch.pi0_pytorch")
  from openpi.models import pi0_config

  return pi0_config


def _state_map(state, filter_, fn):
  # openpi.shared.nnx_utils.state_map (nnx_utils.py:66-70) with flax 0.12's flat_state() ((path, Variable) pairs).
  keys = {path for path, _ in state.filter(filter_).flat_state()}
  return state.map(lambda k, v: fn(v) if k in keys else v)


def _model_config(name: str):
  pi0_config = _import_openpi()
  kwargs, _ = MODELS[name]
  return pi0_config.Pi0Config(**kwargs)


def _freeze_filter(cfg):
  from flax import nnx

  # training/config.py: the LoRA TrainConfigs pass the model config's get_freeze_filter(); the others keep
  # TrainConfig's default nnx.Nothing.
  if "lora" in cfg.paligemma_variant or "lora" in cfg.action_expert_variant:
    return cfg.get_freeze_filter()
  return nnx.Nothing


def _filter_repr(filter_) -> str:
  from flax import nnx

  return "nnx.Nothing" if filter_ is nnx.Nothing else repr(filter_)


def _gemma_fields(gcfg, *, vocab_size) -> dict:
  return dict(
    vocab_size=vocab_size, d_model=int(gcfg.width), num_layers=int(gcfg.depth),
    num_heads=int(gcfg.num_heads), num_kv_heads=int(gcfg.num_kv_heads), head_dim=int(gcfg.head_dim),
    mlp_dim=int(gcfg.mlp_dim),
  )


def _config(cfg) -> dict:
  import openpi.models.gemma as gemma
  import openpi.models.model as model_lib
  import openpi.models.siglip as siglip

  llm = gemma.get_config(cfg.paligemma_variant)
  expert = gemma.get_config(cfg.action_expert_variant)
  vit_variant = "So400m/14"  # pi0.py hard-codes it
  vit = siglip.decode_variant(vit_variant)
  image_size = model_lib.IMAGE_RESOLUTION
  assert image_size[0] == image_size[1]
  config = _gemma_fields(llm, vocab_size=gemma.PALIGEMMA_VOCAB_SIZE)
  config.update(tied_embeddings=True, scanned=True, layer_axis=0)
  # The action expert: no embedding table of its own (it reads the action tokens through action_in_proj).
  config["expert"] = {**_gemma_fields(expert, vocab_size=None), "scanned": True, "layer_axis": 0}
  config["vision"] = dict(
    d_model=int(vit["width"]), num_layers=int(vit["depth"]), num_heads=int(vit["num_heads"]),
    head_dim=int(vit["width"]) // int(vit["num_heads"]), mlp_dim=int(vit["mlp_dim"]),
    image_size=int(image_size[0]), patch_size=int(vit["patch_size"][0]), num_channels=3,
  )
  ranks = {key: (c.lora_configs["attn"].rank if c.lora_configs else None) for key, c in (("llm", llm), ("expert", expert))}
  for c in (llm, expert):  # one rank per expert: attention and MLP share it in every shipped variant
    assert len({lc.rank for lc in c.lora_configs.values()}) <= 1
  config["lora"] = ranks if any(ranks.values()) else None
  config["native"] = {
    "Pi0Config": _jsonable(cfg),
    "paligemma": {"variant": cfg.paligemma_variant, **_jsonable(llm)},
    "action_expert": {"variant": cfg.action_expert_variant, **_jsonable(expert)},
    "siglip": {"variant": vit_variant, **_jsonable(vit), "pool_type": "none", "scan": True,
               "num_classes": int(llm.width), "image_resolution": list(image_size)},
    "freeze_filter": _filter_repr(_freeze_filter(cfg)),
  }
  return config


def build(name: str):
  """Return ``(abstract_params, config_dict)`` for fixture ``name``: the pure dict of
  ``params.filter(trainable_filter)`` as openpi's train.py hands it to ``tx.init``
  (``jax.ShapeDtypeStruct`` leaves)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  cfg = _model_config(name)
  freeze = _freeze_filter(cfg)
  trainable = nnx.All(nnx.Param, nnx.Not(freeze))  # TrainConfig.trainable_filter (config.py:549-552)

  def init(rng):
    model = cfg.create(rng)
    params = nnx.state(model)
    params = _state_map(params, freeze, lambda p: p.replace(p.get_value().astype(jnp.bfloat16)))
    return params.filter(trainable)

  _, model_rng = jax.random.split(jax.random.key(0))
  state = jax.eval_shape(init, model_rng)
  return state.to_pure_dict(), _config(cfg)


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
  leaves = [
    {"path": [_key_to_json(k) for k in path], "shape": list(x.shape), "dtype": str(x.dtype)}
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
  ]
  for prefix, axis in STACKED.items():  # every leaf under a stack has its layers on `axis`
    depth = config["vision"]["num_layers"] if "/img/" in prefix else config["num_layers"]
    under = [leaf for leaf in leaves if "/".join(map(str, leaf["path"])).startswith(prefix + "/")]
    assert under and all(leaf["shape"][axis] == depth for leaf in under), prefix
  assert config["num_layers"] == config["expert"]["num_layers"]  # both experts share the scan
  kwargs, trained_by = MODELS[name]
  n_params = sum(_prod(leaf["shape"]) for leaf in leaves)
  args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
  return {
    "name": name,
    "library": LIBRARY,
    "library_version": f"git {OPENPI_COMMIT[:7]}",
    "recorded_with": (
      f"python {platform.python_version()}, jax {jax.__version__}, jaxlib {version('jaxlib')}, "
      f"flax {version('flax')}, CPU; {PIP_INSTALL}; openpi from source at {OPENPI_COMMIT} "
      "(git checkout, src/ on sys.path; torch, safetensors and openpi.models_pytorch.pi0_pytorch stubbed: "
      "imported, never run)"
    ),
    "model": (
      f"openpi.models.pi0_config.Pi0Config({args}).create(rng)  # {n_params:,} trainable params; "
      f"trained by the TrainConfigs {trained_by}"
    ),
    "how": (
      "jax.eval_shape of train.py's init: model = config.create(rng); params = nnx.state(model); "
      "params = state_map(params, freeze_filter, <to bfloat16>); "
      "tree = params.filter(nnx.All(nnx.Param, nnx.Not(freeze_filter))).to_pure_dict()"
    ),
    "notes": _NOTES,
    "config": config,
    "stacked": dict(STACKED),
    "user_passes": json.loads(json.dumps(USER_PASSES)),
    "leaves": leaves,
  }


def _prod(xs):
  out = 1
  for x in xs:
    out *= int(x)
  return out


def main(names=None) -> None:
  out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trees")
  os.makedirs(out_dir, exist_ok=True)
  for name in names or MODELS:
    rec = record(name)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
      json.dump(rec, f, indent=1)
      f.write("\n")
    print(name, len(rec["leaves"]), "leaves,", f"{sum(_prod(leaf['shape']) for leaf in rec['leaves']):,}", "params")


if __name__ == "__main__":
  main(sys.argv[1:] or None)
