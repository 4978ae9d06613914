"""Record Apple's AXLearn ``fuji`` (LLaMA-style) parameter trees.

Paths + shapes only; see ``FORMAT.md`` beside this file for the JSON format.
Nothing is downloaded: each model is the config AXLearn's own experiment code
builds (``axlearn.experiments.text.gpt.fuji.get_trainer_kwargs(...)["model_cfg"]``,
the very config its trainer uses), instantiated with AXLearn's module
machinery, its parameters from ``jax.eval_shape(model.initialize_parameters_recursively,
key)`` and checked equal in shape to ``model.create_parameter_specs_recursively()``.
AXLearn's parameters are nested dicts whose leaves are ``weight`` and ``scale``.

Install: the PyPI ``axlearn`` is a 2024 build; this uses a source checkout
(github.com/apple/axlearn at ``COMMIT``) on ``PYTHONPATH`` in a Python 3.11
venv with ``pip install jax==0.10.2 jaxlib==0.10.2 optax==0.2.8 attrs absl-py
etils msgpack portpicker toml prefixed typing-extensions einops cloudpickle
&& pip install --no-deps aqtp==0.9.0``. ``fuji.py`` imports input pipelines
(TensorFlow, seqio, grain, ...) that building a model never calls: they are
stood in for by empty modules here (``_stand_ins``). ``axlearn`` is imported
only inside functions, so this module is importable without it.

Run: ``PYTHONPATH=<axlearn checkout> python tests/third_party/record_axlearn.py``
(writes ``trees/axlearn_*.json``).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import platform
import sys
import types

LIBRARY = "axlearn"
COMMIT = "34aed43c1b6e581c4753d06d7cbeedd5010ef26b"
PIP_INSTALL = (
  "pip install jax==0.10.2 jaxlib==0.10.2 optax==0.2.8 attrs absl-py etils msgpack portpicker "
  "toml prefixed typing-extensions einops cloudpickle && pip install --no-deps aqtp==0.9.0; "
  f"axlearn from a source checkout of apple/axlearn at {COMMIT[:7]} on PYTHONPATH"
)

# name -> (fuji size, fuji version name, what replaces its layer stack and attention input
# projection: None, or "trn2" as fuji's own trn2 mesh rule does: StackedTransformerLayer
# and GroupedQKVLinear).
MODELS = {
  "axlearn_fuji_7b_v2": ("7B", "V2", None),
  "axlearn_fuji_7b_v3": ("7B", "V3", None),
  "axlearn_fuji_8b_v3_tiktoken": ("8B", "V3_TIKTOKEN", None),
  "axlearn_fuji_8b_v3_tiktoken_trn2": ("8B", "V3_TIKTOKEN", "trn2"),
}

# Modules fuji.py imports for its input pipelines and trainer, never called
# to build a model; and tokamax (the MoE's kernel backend).
_STAND_INS = (
  "tensorflow", "seqio", "tensorflow_datasets", "tensorflow_text", "tensorflow_io", "grain",
  "tensorboard_plugin_profile", "tensorstore", "nltk", "sentencepiece", "pyarrow",
  "array_record", "tensorflow_metadata", "tensorboard", "google.cloud", "orbax", "tokamax",
)


class _StandIn(types.ModuleType):
  """An empty module whose every attribute is another stand-in (never called)."""

  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    value = _StandIn(f"{self.__name__}.{name}")
    value.__path__ = []
    setattr(self, name, value)
    return value

  def __call__(self, *args, **kwargs):
    return _StandIn(f"{self.__name__}()")

  def __mro_entries__(self, bases):
    return (object,)

  def __or__(self, other):  # in annotations evaluated at import: ts.Context | None
    return self

  __ror__ = __or__

  def __getitem__(self, key):
    return self


class _StandIns(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  def find_spec(self, fullname, path, target=None):
    if any(fullname == m or fullname.startswith(m + ".") for m in _STAND_INS):
      return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
    return None

  def create_module(self, spec):
    module = _StandIn(spec.name)
    module.__path__ = []
    return module

  def exec_module(self, module):
    pass


def _stand_ins() -> None:
  if not any(isinstance(f, _StandIns) for f in sys.meta_path):
    sys.meta_path.insert(0, _StandIns())


def _model_config(size: str, version: str, variant: str | None):
  """The model config and the kwargs fuji.model_config was called with."""
  _stand_ins()
  from axlearn.common.attention import GroupedQKVLinear, StackedTransformerLayer
  from axlearn.common.trainer_config_modifier import ModuleConfigModifier
  from axlearn.experiments.text.gpt import fuji

  seen = {}
  original = fuji.model_config

  def capture(**kwargs):
    seen.update(kwargs)
    return original(**kwargs)

  fuji.model_config = capture
  try:
    v = getattr(fuji.Version, version)
    kwargs = fuji.get_trainer_kwargs(size, vocab_size=fuji.VOCAB_SIZE[v], version=v,
                                     flash_attention=False)
  finally:
    fuji.model_config = original
  cfg = kwargs["model_cfg"]
  if variant == "trn2":  # fuji.py's trn2 mesh rules, with AXLearn's own config merge
    merge = lambda new, old: ModuleConfigModifier._merge_configs(None, new, old)  # noqa: E731
    cfg.decoder.transformer = merge(StackedTransformerLayer.default_config(), cfg.decoder.transformer)
    attention = cfg.decoder.transformer.layer.self_attention.attention
    attention.input_linear.input_linear = merge(
        GroupedQKVLinear.default_config().set(num_kv_heads=seen["num_kv_heads"]),
        attention.input_linear.input_linear,
    )
  return cfg, seen


def _plain(tree):
  import jax

  if isinstance(tree, dict):  # AXLearn's VDict is a dict
    return {k: _plain(v) for k, v in tree.items()}
  return jax.ShapeDtypeStruct(tuple(tree.shape), tree.dtype)


def build(name: str):
  import jax

  size, version, variant = MODELS[name]
  cfg, kw = _model_config(size, version, variant)
  model = cfg.clone(name="model").instantiate(parent=None)
  params = _plain(jax.eval_shape(model.initialize_parameters_recursively, jax.random.PRNGKey(0)))
  specs = model.create_parameter_specs_recursively()
  flat = lambda t, **k: {  # noqa: E731
      jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(t, **k)[0]
  }
  assert flat(params) == flat(specs, is_leaf=lambda x: hasattr(x, "mesh_axes"))
  d = kw["hidden_dim"]
  ffn = kw.get("ffn_dim")
  if ffn is None:  # fuji.model_config's default: SwiGLU's 8/3, rounded up to 256
    from axlearn.experiments.text.gpt.common import scaled_hidden_dim

    ffn = scaled_hidden_dim(scale=8 / 3, round_up_to_multiples_of=256)
  mlp = ffn if isinstance(ffn, int) else ffn.clone(input_dim=d).instantiate()
  heads = kw["num_heads"]
  config = {
    "vocab_size": kw["vocab_size"], "d_model": d, "num_layers": kw["num_layers"],
    "num_heads": heads, "num_kv_heads": kw["num_kv_heads"] or heads, "head_dim": d // heads,
    "mlp_dim": mlp, "tied_embeddings": bool(kw["shared_lm_head"]),
    "scanned": variant is None, "layer_axis": 0 if variant is None else None,
    "native": {
      "fuji_size": size, "fuji_version": version, "variant": variant,
      **{k: v for k, v in kw.items() if isinstance(v, (int, float, str, bool)) or v is None},
    },
  }
  return params, config


def _user_passes(config: dict, variant: str | None) -> dict:
  """AXLearn's layouts are read by its names; a repeated stack is declared
  (its layer axis first); FusedGroupedQKVLinear's [model, q + 2 kv heads,
  head_dim] needs the head counts to split q from k and v."""
  if variant == "trn2":
    return {}
  blocks = {"stacked": {"repeat/layer": 0}}
  if config["num_kv_heads"] != config["num_heads"]:
    blocks.update(num_heads=config["num_heads"], num_kv_heads=config["num_kv_heads"])
  return {"blocks": blocks}


def record(name: str) -> dict:
  import jax

  params, config = build(name)
  size, version, variant = MODELS[name]
  leaves = [
    {"path": [str(getattr(k, "key", k)) for k in path], "shape": list(x.shape), "dtype": str(x.dtype)}
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
  ]
  stacked = {} if variant else {"decoder/transformer/repeat/layer": 0}
  return {
    "name": name,
    "library": LIBRARY,
    "library_version": f"git {COMMIT[:7]}",
    "recorded_with": f"python {platform.python_version()}, jax {jax.__version__}, CPU; {PIP_INSTALL}",
    "model": (
      f"fuji.get_trainer_kwargs({size!r}, version=fuji.Version.{version}, ...)['model_cfg']"
      + (" with fuji.py's trn2 rules (StackedTransformerLayer, GroupedQKVLinear)" if variant else "")
    ),
    "how": "jax.eval_shape(model.initialize_parameters_recursively, key), checked against "
           "model.create_parameter_specs_recursively()",
    "notes": (
      "AXLearn (attention.py, layers.py, decoder.py, repeat.py): Linear weight [in, out]; "
      "q/k/v_proj [model, heads, head_dim] ('btd,dnh->btnh'); FusedQKVLinear qkv_proj "
      "[3, model, heads, head_dim] ('btd,pdnh->pbtnh'); FusedGroupedQKVLinear qkv_proj "
      "[model, heads + 2 kv_heads, head_dim] (split at [heads, heads + kv_heads]); o_proj "
      "[model, heads, head_dim] with the output first ('btnh,dnh->btd'); Embedding token_emb and "
      "LmHead lm_head [vocab, dim]; RMSNorm scale; RepeatedTransformerLayer puts the layer axis "
      "first (repeat.py: shape=(num_layers, *spec.shape))."
    ),
    "user_passes": _user_passes(config, variant),
    **({"head_counts_needed": "FusedGroupedQKVLinear's qkv_proj [model, heads + 2 kv_heads, head_dim]: "
                              "the shape does not say where the query heads end"}
       if "num_heads" in _user_passes(config, variant).get("blocks", {}) else {}),
    "stacked": stacked,
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
