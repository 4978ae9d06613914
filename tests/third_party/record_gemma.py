"""Record Google DeepMind ``gemma`` (PyPI ``gemma`` 4.x, ``gemma.gm.nn``) parameter trees.

Paths + shapes only; see ``FORMAT.md`` beside this file for the JSON format.
Nothing is downloaded: every model is the library's own Flax Linen class built
from its built-in ``TransformerConfig`` (no checkpoint), and parameters are only
ever abstract: ``jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)``.
The recorded tree is ``variables['params']``, the tree users hand to optax
(``gm.ckpts.load_params`` returns the same structure).  ``gemma`` is imported
only inside functions, so this module is importable without it.

Install (Python >= 3.12; ``pip install gemma`` backtracks for > 20 min, so
gemma and kauldron go in with ``--no-deps`` plus only what ``from gemma import gm;
gm.nn.Gemma3_270M()`` and ``model.init`` import)::

    python3.12 -m venv venv && . venv/bin/activate
    pip install "jax==0.12.0.1" "flax==0.12.12" "ipython==9.6.0" "pillow==12.0.0" "matplotlib==3.10.7"
    pip install --no-deps <INSTALL_NO_DEPS below>

Run: ``python tests/third_party/record_gemma.py`` (writes ``trees/gemma_*.json``).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import platform

LIBRARY = "gemma"
INSTALL_WITH_DEPS = (
  "jax==0.12.0.1",
  "flax==0.12.12",
  "ipython==9.6.0",
  "pillow==12.0.0",
  "matplotlib==3.10.7",
)
# Imported (transitively, mostly via kauldron -> clu -> tensorflow/tensorboard,
# kauldron -> mediapy/grain/tfds) by `from gemma import gm` + model init.
INSTALL_NO_DEPS = (
  "gemma==4.0.1",
  "kauldron==1.4.4",
  "einops==0.8.2",
  "jaxtyping==0.3.11",
  "wadler-lindig==0.1.8",
  "typeguard==4.6.0",
  "tqdm==4.67.1",
  "lark==1.3.1",
  "importlib-resources==7.1.0",
  "ml-collections==1.1.0",
  "immutabledict==4.3.1",
  "clu==0.0.12",
  "wrapt==2.5.2",
  "packaging==26.3",
  "tensorflow-cpu==2.21.0",
  "tensorboard==2.21.0",
  "six==1.17.0",
  "termcolor==3.3.0",
  "gast==0.7.0",
  "google-pasta==0.2.0",
  "astunparse==1.6.3",
  "flatbuffers==25.12.19",
  "requests==2.34.2",
  "charset-normalizer==3.4.4",
  "idna==3.11",
  "urllib3==2.5.0",
  "certifi==2025.11.12",
  "keras==3.15.1",
  "namex==0.1.0",
  "optree==0.17.0",
  "h5py==3.14.0",
  "pandas==2.3.3",
  "python-dateutil==2.9.0.post0",
  "pytz==2025.2",
  "tzdata==2025.2",
  "mediapy==1.2.7",
  "grain==0.2.18",
  "cloudpickle==3.1.2",
  "portpicker==1.6.0",
  "array-record==0.8.3",
  "tensorflow-datasets==4.9.10",
  "toml==0.10.2",
  "promise==2.3",
  "tensorflow-metadata==1.17.2",
  "googleapis-common-protos==1.72.0",
  "simple-parsing==0.1.7",
  "docstring-parser==0.17.0",
  "dm-tree==0.1.9",
  "chex==0.1.91",
  "toolz==1.1.0",
  "dialog==1.1.0",
  "sentencepiece==0.2.1",
)
PIP_INSTALL = (
  "pip install "
  + " ".join(f'"{p}"' for p in INSTALL_WITH_DEPS)
  + " && pip install --no-deps "
  + " ".join(f'"{p}"' for p in INSTALL_NO_DEPS)
)
TOKENS_SHAPE = (1, 8)

NAMES = (
  "gemma_gemma2_2b",
  "gemma_gemma3_270m",
  "gemma_gemma3_1b",
  "gemma_mha_qkv",
  "gemma_testing_dummy",
)

# name -> the fixture's "model" string (how the module is built; see _make_model)
_MODEL_SRC = {
  "gemma_gemma2_2b": "gemma.gm.nn.Gemma2_2B()",
  "gemma_gemma3_270m": "gemma.gm.nn.Gemma3_270M()  # config.vision_encoder=None: text only",
  "gemma_gemma3_1b": "gemma.gm.nn.Gemma3_1B()  # config.vision_encoder=None: text only",
  "gemma_mha_qkv": (
    "gemma.gm.nn.Gemma2_2B(config=dataclasses.replace(gemma.gm.nn.Gemma2_2B.config, "
    "num_kv_heads=8))  # Gemma 2 2B with num_kv_heads == num_heads == 8 (MHA), so the "
    "library's Attention uses the fused qkv_einsum; not a released model (gemma 4.x has "
    "no Gemma 1 7B class any more)"
  ),
  "gemma_testing_dummy": (
    "gemma.gm.testing.DummyGemma()  # the library's own tiny test model "
    "(num_heads == num_kv_heads == 2 -> qkv_einsum, use_post_*_norm=None)"
  ),
}


def _make_model(name: str):
  from gemma import gm

  if name == "gemma_gemma2_2b":
    return gm.nn.Gemma2_2B()
  if name == "gemma_gemma3_270m":
    return gm.nn.Gemma3_270M()
  if name == "gemma_gemma3_1b":
    return gm.nn.Gemma3_1B()
  if name == "gemma_mha_qkv":
    base = gm.nn.Gemma2_2B.config
    cfg = dataclasses.replace(base, num_kv_heads=base.num_heads)
    return gm.nn.Gemma2_2B(config=cfg)
  if name == "gemma_testing_dummy":
    return gm.testing.DummyGemma()
  raise KeyError(name)


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
  out = {f.name: _jsonable(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
  out["num_layers"] = int(cfg.num_layers)  # functools.cached_property
  return out


def _standard_config(cfg) -> dict:
  return dict(
    vocab_size=int(cfg.num_embed),
    d_model=int(cfg.embed_dim),
    num_layers=int(cfg.num_layers),
    num_heads=int(cfg.num_heads),
    num_kv_heads=int(cfg.num_kv_heads),
    head_dim=int(cfg.head_dim),
    mlp_dim=int(cfg.hidden_dim),
    # Embedder.decode: `jnp.dot(x, self.input_embedding_table.T)`; no output leaf.
    tied_embeddings=True,
    scanned=False,
    layer_axis=None,
  )


def build(name: str):
  """Return ``(abstract_params, config_dict)`` for fixture ``name``.

  ``abstract_params`` is ``variables['params']`` of
  ``jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)`` (a dict of
  ``jax.ShapeDtypeStruct``; the model's default ``dtype=jnp.bfloat16`` makes the
  params bfloat16).
  """
  import jax
  import jax.numpy as jnp

  model = _make_model(name)
  tokens = jnp.ones(TOKENS_SHAPE, dtype=jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)
  params = variables["params"]
  try:
    from flax.core import unfreeze

    params = unfreeze(params)
  except ImportError:  # pragma: no cover
    pass
  cfg = _standard_config(model.config)
  cfg["native"] = _native_config(model.config)
  return params, cfg


def _key_to_json(k):
  import jax

  if isinstance(k, jax.tree_util.DictKey):
    return k.key if isinstance(k.key, (str, int)) else str(k.key)
  if isinstance(k, jax.tree_util.SequenceKey):
    return int(k.idx)
  if isinstance(k, jax.tree_util.GetAttrKey):
    return k.name
  if isinstance(k, jax.tree_util.FlattenedIndexKey):
    return int(k.key)
  return str(k)


# Layout facts, verified by reading gemma 4.0.1 gemma/gm/nn/_modules.py, _layers.py,
# _transformer.py, _gemma.py.
_NOTES_COMMON = (
  "Top level of params: 'embedder', 'layer_0'..'layer_{L-1}' (separate subtrees, unscanned), "
  "'final_norm' (no 'transformer' prefix in the gm.nn API). "
  "Embedding: embedder/input_embedding [vocab, D]; tied: Embedder.decode is "
  "'return jnp.dot(x, self.input_embedding_table.T)', no output/lm_head leaf. "
  "All weights are _layers.Einsum params named 'w' (w has the shape given, applied as "
  "'jnp.einsum(eqn, x, w)'), except the MLP's. "
  "Attention (attn/): if num_kv_heads == num_heads ('use_qkv_einsum') one fused "
  "qkv_einsum/w of shape (3, num_heads, features, head_dim) = [3, N, D, H], "
  "'query_proj, key_proj, value_proj = self.qkv_einsum('BTD,SNDH->SBTNH', x)' (index 0=q, 1=k, 2=v); "
  "otherwise q_einsum/w (num_heads, features, head_dim) = [N, D, H], "
  "'query_proj = self.q_einsum('BTD,NDH->BTNH', x)' and kv_einsum/w "
  "(2, num_kv_heads, features, head_dim) = [2, K, D, H], "
  "'key_proj, value_proj = self.kv_einsum('BSD,CKDH->CBSKH', x)' (index 0=k, 1=v). "
  "attn_vec_einsum/w (num_heads, head_dim, features) = [N, H, D], "
  "'attn_output = self.attn_vec_einsum('BTNH,NHD->BTD', encoded)'. "
  "MLP (mlp/): gating and linear are Einsums whose scope is merged into the FeedForward "
  "module ('nn.share_scope(self, gating)'), so the leaves are mlp/gating_einsum and mlp/linear "
  "directly (weight_name, no '/w'). transpose_gating_einsum=False: gating_einsum shape "
  "(2, features, hidden_dim) = [2, D, F], eq '...F,NFH->...NH'; transpose_gating_einsum=True: "
  "shape (2, hidden_dim, features) = [2, F, D], eq '...F,NHF->...NH' (in both eqs F=features=D, "
  "H=hidden). 'activations = nn.gelu(gate[..., 0, :]) * gate[..., 1, :]': index 0 = gate "
  "(gelu), index 1 = up (linear). mlp/linear shape (hidden_dim, features) = [F, D], "
  "'outputs = linear('...H,HF->...F', activations)'. "
  "RMSNorm leaf 'scale' [last dim], zeros-init, applied as 'normed_inputs * (1 + scale)'. "
  "Per layer: pre_attention_norm, post_attention_norm (if use_post_attn_norm), pre_ffw_norm, "
  "post_ffw_norm (if use_post_ffw_norm). "
  "dtype: Transformer.dtype defaults to jnp.bfloat16 and __call__ wraps init in "
  "'_dtype_params.initialize_param_with_dtype(self.dtype, ...)', so all these params are bfloat16."
)

_NOTES = {
  "gemma_gemma2_2b": (
    "Gemma 2 2B: num_heads=8, num_kv_heads=4 -> q_einsum [8, 2304, 256] + kv_einsum "
    "[2, 4, 2304, 256]. Gemma2_2B leaves transpose_gating_einsum at its default False -> "
    "mlp/gating_einsum [2, D, F] = [2, 2304, 9216] (Gemma2_9B/27B and all Gemma 3 set it True "
    "-> [2, F, D]). No qk-norm. Vocab 256128. "
  ),
  "gemma_gemma3_270m": (
    "Gemma 3 270M: config.vision_encoder=None in the library (text only; only Gemma3_4B/12B/27B "
    "have a SigLIP tower, removable with text_only=True). num_heads=4, num_kv_heads=1 -> "
    "q_einsum [4, 640, 256], kv_einsum [2, 1, 640, 256]. transpose_gating_einsum=True -> "
    "mlp/gating_einsum [2, F, D] = [2, 2048, 640]. use_qk_norm=True -> attn/_query_norm/scale "
    "[head_dim] and attn/_key_norm/scale [head_dim] (leading underscore), applied to "
    "query_proj/key_proj before RoPE. "
  ),
  "gemma_gemma3_1b": (
    "Gemma 3 1B: config.vision_encoder=None in the library (text only). num_heads=4, "
    "num_kv_heads=1 -> q_einsum [4, 1152, 256], kv_einsum [2, 1, 1152, 256]; "
    "transpose_gating_einsum=True -> mlp/gating_einsum [2, 6912, 1152]; qk-norm leaves "
    "attn/_query_norm/scale, attn/_key_norm/scale [256]. "
  ),
  "gemma_mha_qkv": (
    "Synthetic: Gemma2_2B's own config with num_kv_heads set to num_heads=8 via "
    "dataclasses.replace, so Attention.use_qkv_einsum is True: attn/qkv_einsum/w "
    "[3, 8, 2304, 256] replaces q_einsum + kv_einsum. Everything else as Gemma 2 2B "
    "(gating_einsum [2, D, F]). "
  ),
  "gemma_testing_dummy": (
    "gm.testing.DummyGemma: the library's test model, num_heads == num_kv_heads == 2 -> "
    "attn/qkv_einsum/w [3, 2, 32, 128]; use_post_attn_norm/use_post_ffw_norm=None -> no post "
    "norms; transpose_gating_einsum=False -> gating_einsum [2, D, F] = [2, 32, 128]. "
  ),
}


def record(name: str) -> dict:
  import flax
  import gemma
  import jax

  try:
    from importlib.metadata import version

    gemma_version = version("gemma")
  except Exception:  # pragma: no cover
    gemma_version = getattr(gemma, "__version__", "unknown")

  params, cfg = build(name)
  leaves = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    leaves.append(
      {
        "path": [_key_to_json(k) for k in path],
        "shape": [int(s) for s in leaf.shape],
        "dtype": str(leaf.dtype),
      }
    )
  return {
    "name": name,
    "library": LIBRARY,
    "library_version": gemma_version,
    "recorded_with": (
      f"python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__}, "
      f"CPU; {PIP_INSTALL}"
    ),
    "model": _MODEL_SRC[name],
    "how": (
      "variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), "
      "jnp.ones((1, 8), jnp.int32)); tree = variables['params']"
    ),
    "notes": _NOTES[name] + _NOTES_COMMON,
    "config": cfg,
    "leaves": leaves,
  }


def main() -> None:
  out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trees")
  os.makedirs(out_dir, exist_ok=True)
  for name in NAMES:
    rec = record(name)
    path = os.path.join(out_dir, f"{name}.json")
    with open(path, "w") as f:
      json.dump(rec, f, indent=1)
      f.write("\n")
    print(f"wrote {path}: {len(rec['leaves'])} leaves")


if __name__ == "__main__":
  main()
