"""Record Levanter parameter trees (paths, shapes and axis names only).

See ``FORMAT.md`` beside this file for the JSON format. Levanter's models are
``haliax`` modules: every parameter is a ``NamedArray`` (its array is the
pytree leaf, under a ``FlattenedIndexKey(0)``), ``hnn.Linear`` keeps its
``In`` and ``Out`` axes as static fields and stores its weight
``[Out..., In...]`` (``out_first=True``: Llama, Mistral, Gemma, Qwen,
Mixtral) or ``[In..., Out...]`` (GPT-2), and ``hnn.Stacked`` adds the layer
axis in front of every leaf of the decoder layers. Each leaf is recorded
with its axis names, and a module weight with its module's class and
``In``/``Out`` (and an ``hnn.MoELinear``'s ``Experts``); each ``Stacked``
with its path and ``Block`` axis: what ``tests/test_third_party_trees.py``
rebuilds with haliax's own classes.

The recorded tree is what a Levanter user hands to optax::

    params = eqx.filter(model, eqx.is_inexact_array)

built under ``eqx.filter_eval_shape`` (nothing is allocated; a 7B model
records in seconds). ``levanter`` and ``haliax`` are imported only inside
functions, so this module is importable without them.

Install (Python 3.11; levanter pulls ray, wandb, datasets and more)::

    pip install "levanter==1.2.dev1644" "haliax==1.4.dev453" gitpython chex "jax[cpu]==0.10.2"

Run: ``python tests/third_party/record_levanter.py`` (writes ``trees/levanter_*.json``).
"""

from __future__ import annotations

import json
import os
import platform

from record_hf_flax import _key_to_json  # the recorders' shared JSON path keys

LIBRARY = "levanter"
PIP_INSTALL = (
    'pip install "levanter==1.2.dev1644" "haliax==1.4.dev453" gitpython chex "jax[cpu]==0.10.2"'
)

# name -> (module, config class, model class, config kwargs, vocab size). The
# sizes are the published models' (their Hugging Face config.json).
_SPECS = {
    "levanter_llama2_7b": ("llama", "LlamaConfig", "LlamaLMHeadModel", dict(
        seq_len=4096, hidden_dim=4096, intermediate_dim=11008, num_layers=32, num_heads=32,
        num_kv_heads=32), 32000),
    "levanter_llama3_8b": ("llama", "LlamaConfig", "LlamaLMHeadModel", dict(
        seq_len=8192, hidden_dim=4096, intermediate_dim=14336, num_layers=32, num_heads=32,
        num_kv_heads=8), 128256),
    "levanter_gemma_2b": ("gemma", "GemmaConfig", "GemmaLMHeadModel", dict(
        seq_len=8192, hidden_dim=2048, intermediate_dim=16384, vocab_size=256000, num_layers=18,
        num_heads=8, num_kv_heads=1, head_dim=256), 256000),
    "levanter_qwen3_0_6b": ("qwen", "Qwen3Config", "Qwen3LMHeadModel", dict(
        seq_len=4096, hidden_dim=1024, intermediate_dim=3072, num_layers=28, num_heads=16,
        num_kv_heads=8, head_dim=128, tie_word_embeddings=True), 151936),
    "levanter_gpt2_small": ("gpt2", "Gpt2Config", "Gpt2LMHeadModel", dict(
        seq_len=1024, hidden_dim=768, num_layers=12, num_heads=12), 50257),
    "levanter_mixtral_8x7b": ("mixtral", "MixtralConfig", "MixtralLMHeadModel", dict(
        seq_len=4096, hidden_dim=4096, intermediate_dim=14336, num_layers=32, num_heads=32,
        num_kv_heads=8, n_routed_experts=8, num_experts_per_tok=2), 32000),
}
NAMES = tuple(_SPECS)


def _model(name: str):
    import importlib

    import equinox as eqx
    import haliax as hax
    import jax

    module, config_cls, model_cls, kwargs, vocab = _SPECS[name]
    models = importlib.import_module(f"levanter.models.{module}")
    config = getattr(models, config_cls)(**kwargs)
    Vocab = hax.Axis("vocab", vocab)

    def init(key):
        return eqx.filter(getattr(models, model_cls).init(Vocab, config, key=key), eqx.is_inexact_array)

    return eqx.filter_eval_shape(init, jax.random.PRNGKey(0)), config


def _standard_config(name: str, config) -> dict:
    vocab = _SPECS[name][4]
    if name == "levanter_gpt2_small":
        d, heads = config.hidden_dim, config.num_heads
        fields = dict(num_kv_heads=heads, head_dim=d // heads, mlp_dim=d * config.mlp_scale,
                      tied_embeddings=True)
    else:
        d, heads = config.hidden_dim, config.num_heads
        head_dim = getattr(config, "head_dim", None) or d // heads
        fields = dict(num_kv_heads=config.num_kv_heads, head_dim=head_dim,
                      mlp_dim=config.intermediate_dim,
                      tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)))
    out = dict(vocab_size=vocab, d_model=d, num_layers=config.num_layers, num_heads=heads, **fields)
    if name == "levanter_mixtral_8x7b":
        out["num_experts"] = config.n_routed_experts
    return out


def build(name: str):
    """Return ``(abstract_params, config_dict)`` for fixture ``name``:
    ``eqx.filter(model, eqx.is_inexact_array)`` evaluated abstractly (the
    model's own pytree, ``NamedArray`` s of ``jax.ShapeDtypeStruct``)."""
    params, config = _model(name)
    cfg = _standard_config(name, config)
    cfg.update(scanned=True, layer_axis=0, native=_native(config))
    return params, cfg


def _native(config) -> dict:
    import dataclasses

    out = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value is None or isinstance(value, (bool, int, float, str)):
            out[field.name] = value
    return out


def _names(spec) -> list[str]:
    if spec is None:
        return []
    if isinstance(spec, str):
        return [spec]
    if hasattr(spec, "name"):
        return [spec.name]
    return [n for item in spec for n in _names(item)]


def describe(params) -> tuple[list[dict], list[dict]]:
    """Each leaf's path, shape, dtype and axis names (plus its module's
    In/Out for a module weight), and each Stacked's path and Block axis."""
    import haliax as hax
    import haliax.nn as hnn
    import jax

    is_named = lambda x: isinstance(x, hax.NamedArray)  # noqa: E731
    is_module = lambda x: isinstance(x, (hnn.Linear, hnn.MoELinear))  # noqa: E731
    modules = {}
    for path, node in jax.tree_util.tree_flatten_with_path(params, is_leaf=is_module)[0]:
        if is_module(node):
            fields = {"class": type(node).__name__, "In": _names(node.In), "Out": _names(node.Out)}
            if isinstance(node, hnn.MoELinear):
                fields["Experts"] = _names(node.Experts)
            modules[tuple(_key_to_json(k) for k in path) + ("weight",)] = fields
    axes = {}
    for path, node in jax.tree_util.tree_flatten_with_path(params, is_leaf=is_named)[0]:
        if is_named(node):
            axes[tuple(_key_to_json(k) for k in path)] = [a.name for a in node.axes]
    leaves = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [_key_to_json(k) for k in path]
        entry = {"path": keys, "shape": [int(s) for s in leaf.shape], "dtype": str(leaf.dtype),
                 "axes": axes[tuple(keys[:-1])]}
        if tuple(keys[:-1]) in modules:
            entry["module"] = modules[tuple(keys[:-1])]
        leaves.append(entry)
    stacks = []

    def find_stacks(tree, prefix):
        is_stacked = lambda x: isinstance(x, hnn.Stacked)  # noqa: E731
        for path, node in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_stacked)[0]:
            if is_stacked(node):
                here = prefix + [_key_to_json(k) for k in path]
                stacks.append({"path": here, "block": [node.Block.name, node.Block.size]})
                find_stacks(node.stacked, here + ["stacked"])

    find_stacks(params, [])
    return leaves, stacks


def record(name: str) -> dict:
    from importlib.metadata import version

    import jax

    params, cfg = build(name)
    module, config_cls, model_cls, kwargs, vocab = _SPECS[name]
    leaves, stacks = describe(params)
    kw = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return {
        "name": name,
        "library": LIBRARY,
        "library_version": f"{version('levanter')} (haliax {version('haliax')})",
        "recorded_with": f"python {platform.python_version()}, jax {jax.__version__}, {PIP_INSTALL}",
        "model": (
            f"levanter.models.{module}.{model_cls}.init(haliax.Axis('vocab', {vocab}), "
            f"levanter.models.{module}.{config_cls}({kw}), key=jax.random.PRNGKey(0))"
        ),
        "how": (
            "eqx.filter_eval_shape(lambda key: eqx.filter(Model.init(Vocab, config, key=key), "
            "eqx.is_inexact_array), jax.random.PRNGKey(0)); paths from "
            "jax.tree_util.tree_flatten_with_path (a NamedArray's array under [0])"
        ),
        "notes": (
            "haliax modules: hnn.Linear weight [Out..., In...] (out_first=True) or [In..., Out...] "
            "(GPT-2: out_first=False); the query's Out is (kv_heads, q_heads_per_group, head_size); "
            "hnn.Stacked puts the layer axis first on every leaf under it. 'axes' are the "
            "NamedArray's names, 'module' the owning module's In/Out (and MoELinear's Experts), "
            "'stacked_modules' each hnn.Stacked's path and Block axis."
        ),
        "config": cfg,
        "stacked": {"/".join(map(str, s["path"] + ["stacked"])): 0 for s in stacks},
        "stacked_modules": stacks,
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
