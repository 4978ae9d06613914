"""Record keras-hub backbone parameter trees (JAX backend) as JSON fixtures.

The tree recorded is the one a keras-on-JAX user hands to optax: the model's
``trainable_variables`` keyed by ``variable.path`` (for example
``"decoder_block_0/attention/query/kernel"``), split on ``"/"`` into a nested
dict. Leaves are ``jax.ShapeDtypeStruct``.

Backbones are built from constructor arguments (never ``from_preset``: no hub
access) inside ``keras.src.backend.StatelessScope(initialize_variables=False)``,
so Keras creates *uninitialized* variables (shape + dtype + initializer only)
and the functional graph is traced with ``jax.eval_shape``: no weights are
allocated, which is why full-size configs (Llama-2-7B) are cheap here.

Importing this module does not import keras or jax. ``build(name)`` sets
``KERAS_BACKEND=jax`` before importing keras; ``main()`` writes
``trees/<name>.json`` beside this file. See FORMAT.md for the JSON format.

Environment used to record (Python 3.11, CPU, no TensorFlow)::

    python3 -m venv /tmp/venv_keras
    /tmp/venv_keras/bin/pip install "keras==3.15.1" "jax[cpu]==0.10.2" \
        "numpy==2.4.6" "absl-py==2.5.1" "regex==2026.11.19" "rich==15.0.0" \
        "packaging==26.4" "sentencepiece==0.2.3" "tokenizers==0.23.3" \
        "kagglehub==1.0.2" "kagglesdk==0.1.28"
    /tmp/venv_keras/bin/pip install --no-deps "keras-hub==0.32.0"

(keras-hub's metadata requires tensorflow-text on Linux, which drags in
tensorflow, but ``import keras_hub`` and the backbones used here do not need
it; hence ``--no-deps`` plus the remaining requirements pinned by hand.)
"""

from __future__ import annotations

import json
import os
import platform
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TREES = os.path.join(HERE, "trees")

PIP_COMMANDS = (
    'pip install "keras==3.15.1" "jax[cpu]==0.10.2" "numpy==2.4.6" '
    '"absl-py==2.5.1" "regex==2026.11.19" "rich==15.0.0" "packaging==26.4" '
    '"sentencepiece==0.2.3" "tokenizers==0.23.3" "kagglehub==1.0.2" '
    '"kagglesdk==0.1.28" && pip install --no-deps "keras-hub==0.32.0"'
)

# name -> (backbone class name, constructor kwargs, human description)
_SPECS = {
    # Llama-2-7B (keras-hub preset "llama2_7b_en" shapes): MHA (32 kv heads),
    # untied output projection. 6,738,415,616 params, built abstractly.
    "keras_hub_llama2_7b": (
        "LlamaBackbone",
        dict(
            name="llama_backbone",  # fixed so get_config() is stable across builds
            vocabulary_size=32000,
            num_layers=32,
            num_query_heads=32,
            num_key_value_heads=32,
            hidden_dim=4096,
            intermediate_dim=11008,
            rope_max_wavelength=10000,
            layer_norm_epsilon=1e-5,
            tie_word_embeddings=False,
        ),
        "Llama-2-7B (full published config)",
    ),
    # Llama-3.2-1B (HF config via keras-hub's convert_llama3 mapping): GQA
    # 32q/8kv, tied embeddings. 1,235,814,400 params, built abstractly.
    "keras_hub_llama3_2_1b": (
        "LlamaBackbone",
        dict(
            name="llama_backbone",  # fixed so get_config() is stable across builds
            vocabulary_size=128256,
            num_layers=16,
            num_query_heads=32,
            num_key_value_heads=8,
            hidden_dim=2048,
            intermediate_dim=8192,
            rope_max_wavelength=500000.0,
            rope_frequency_adjustment_factor=32.0,
            rope_low_freq_factor=1.0,
            rope_high_freq_factor=4.0,
            rope_pretraining_sequence_length=8192,
            layer_norm_epsilon=1e-5,
            tie_word_embeddings=True,
        ),
        "Llama-3.2-1B (full published config, GQA, tied embeddings)",
    ),
    # Gemma 3 270M, text only (HF gemma-3-270m config through keras-hub's
    # convert_gemma3 mapping; vision_encoder=None).
    "keras_hub_gemma3_270m": (
        "Gemma3Backbone",
        dict(
            name="gemma3_backbone",  # fixed so get_config() is stable across builds
            vocabulary_size=262144,
            image_size=None,
            num_layers=18,
            num_query_heads=4,
            num_key_value_heads=1,
            hidden_dim=640,
            intermediate_dim=2048,
            head_dim=256,
            query_head_dim_normalize=True,
            use_query_key_norm=True,
            use_post_ffw_norm=True,
            use_post_attention_norm=True,
            attention_logit_soft_cap=None,
            final_logit_soft_cap=None,
            use_sliding_window_attention=True,
            sliding_window_size=512,
            local_rope_scaling_factor=1.0,
            global_rope_scaling_factor=1.0,
            vision_encoder=None,
            layer_norm_epsilon=1e-6,
        ),
        "Gemma 3 270M (full published config, text only)",
    ),
    # Gemma 2B (keras-hub preset "gemma_2b_en" shapes). keras-hub's Gemma
    # intermediate_dim is 2x the per-branch FFN width (HF intermediate_size
    # 16384 -> keras 32768; each gate branch is intermediate_dim // 2).
    "keras_hub_gemma_2b": (
        "GemmaBackbone",
        dict(
            name="gemma_backbone",  # fixed so get_config() is stable across builds
            vocabulary_size=256000,
            num_layers=18,
            num_query_heads=8,
            num_key_value_heads=1,
            hidden_dim=2048,
            intermediate_dim=32768,
            head_dim=256,
            layer_norm_epsilon=1e-6,
        ),
        "Gemma 2B (full published config)",
    ),
    # ViT-B/16 (keras-hub preset "vit_base_patch16_224_imagenet" shapes), the
    # backbone: class token, a [197, 768] position table (patches + class).
    "keras_hub_vit_base": (
        "ViTBackbone",
        dict(
            name="vit_backbone",  # fixed so get_config() is stable across builds
            image_shape=(224, 224, 3),
            patch_size=16,
            num_layers=12,
            num_heads=12,
            hidden_dim=768,
            mlp_dim=3072,
        ),
        "ViT-B/16 (full published config, backbone)",
    ),
    # PaliGemma 3B at 224 pixels: a SigLIP So400m/14 vision tower (1152 wide,
    # 16 heads of 72) beside a Gemma 2B decoder (heads of 256). One head_dim
    # cannot serve both: the user passes the vision tower's alone.
    "keras_hub_pali_gemma_3b_224": (
        "PaliGemmaBackbone",
        dict(
            name="pali_gemma_backbone",  # fixed so get_config() is stable across builds
            vocabulary_size=257152,
            image_size=224,
            num_layers=18,
            num_query_heads=8,
            num_key_value_heads=1,
            hidden_dim=2048,
            intermediate_dim=32768,
            head_dim=256,
            vit_patch_size=14,
            vit_num_heads=16,
            vit_hidden_dim=1152,
            vit_num_layers=27,
            vit_intermediate_dim=4304,
        ),
        "PaliGemma 3B, 224 px (SigLIP So400m/14 + Gemma 2B widths)",
    ),
}

# LoRA fine-tuning trees: a backbone above after ``backbone.enable_lora(rank)``
# (keras-hub's recipe), whose trainable variables are then the factors alone:
# ``lora_kernel_a`` (the adapted kernel with its last axis the rank) and
# ``lora_kernel_b [rank, kernel.shape[-1]]`` of every query and value layer.
_LORA = {
    "keras_hub_gemma_2b_lora_r4": ("keras_hub_gemma_2b", 4),
    "keras_hub_llama2_7b_lora_r4": ("keras_hub_llama2_7b", 4),
    "keras_hub_pali_gemma_3b_224_lora_r4": ("keras_hub_pali_gemma_3b_224", 4),
}

# What the user passes where the config's head_dim is not it (FORMAT.md).
_USER_PASSES = {
    "keras_hub_pali_gemma_3b_224": {"head_dim": {"image_encoder": 72}},
    "keras_hub_pali_gemma_3b_224_lora_r4": {"head_dim": {"image_encoder": 72}},
}

NAMES = tuple(_SPECS) + tuple(_LORA)


def _spec(name):
    """(class name, constructor kwargs, description, LoRA rank or None)."""
    if name in _LORA:
        base, rank = _LORA[name]
        cls_name, kw, desc = _SPECS[base]
        return cls_name, kw, f"{desc}; backbone.enable_lora(rank={rank})", rank
    return (*_SPECS[name], None)

_NOTES_LLAMA = (
    "Layout verified in keras_hub 0.32.0 source (llama_attention.py, "
    "llama_decoder.py, llama_backbone.py). Attention EinsumDense (no bias): "
    "query 'bqm,muh->bquh' kernel (d_model, num_heads, head_dim); key and "
    "value 'bkm,mvh->bkvh' kernel (d_model, num_kv_heads, head_dim); "
    "attention_output 'bquh,uhm->bqm' kernel (num_heads, head_dim, d_model). "
    "NOTE: Llama's q/k/v kernels put d_model FIRST (unlike Gemma's "
    "heads-first 'ndh'). MLP = keras.layers.Dense (no bias), kernel (in, out): "
    "feedforward_gate_dense (d_model, intermediate_dim) [silu branch], "
    "feedforward_intermediate_dense (d_model, intermediate_dim) [up], "
    "feedforward_output_dense (intermediate_dim, d_model) [down]; "
    "intermediate_dim IS the per-branch width. Norms: LlamaLayerNorm "
    "(RMSNorm, weight 'scale', init ones, x*scale) at "
    "transformer_layer_i/self_attention_layernorm/scale, "
    "transformer_layer_i/feedforward_layernorm/scale, and "
    "sequence_output_layernorm/scale. Embedding: keras.layers."
    "ReversibleEmbedding token_embedding/embeddings (vocab, d_model); with "
    "tie_word_embeddings=False (LlamaBackbone default) an untied output "
    "projection token_embedding/reverse_embeddings of shape (d_model, vocab) "
    "is added (transposed relative to embeddings); with True it is absent. "
    "No non-trainable variables (RoPE is computed, not stored)."
)

_NOTES_GEMMA_COMMON = (
    "Attention EinsumDense (no bias): query 'btd,ndh->btnh' kernel "
    "(num_heads, d_model, head_dim); key and value 'bsd,kdh->bskh' kernel "
    "(num_kv_heads, d_model, head_dim); attention_output 'btnh,nhd->btd' "
    "kernel (num_heads, head_dim, d_model). MLP EinsumDense (no bias): "
    "ffw_gating 'btd,df->btf' (d_model, f) [gelu branch], ffw_gating_2 "
    "'btd,df->btf' (d_model, f) [linear/up branch], ffw_linear 'btf,fd->btd' "
    "(f, d_model) [down]. Output projection is TIED to the embedding "
    "(ReversibleEmbedding tie_weights=True hard-coded): only "
    "token_embedding/embeddings (vocab, d_model), no reverse_embeddings. "
    "Norm leaves are RMSNormalization 'scale' (init zeros, applied as "
    "x*(1+scale)): decoder_block_i/pre_attention_norm/scale, "
    "decoder_block_i/pre_ffw_norm/scale, final_normalization/scale"
)

_NOTES_GEMMA = (
    "Layout verified in keras_hub 0.32.0 source (gemma_attention.py, "
    "gemma_decoder_block.py, gemma_backbone.py). "
    + _NOTES_GEMMA_COMMON
    + " (use_post_*_norm default False for Gemma 1, so no post_* norms). "
    "FFN width: GemmaDecoderBlock uses output_shape intermediate_dim // 2 for "
    "both gate branches, so keras intermediate_dim=32768 gives per-branch "
    "f=16384 (= HF intermediate_size; convert_gemma.py multiplies HF's by 2). "
    "config.mlp_dim records the per-branch 16384. No non-trainable variables."
)

_NOTES_GEMMA3 = (
    "Layout verified in keras_hub 0.32.0 source (gemma3_attention.py, "
    "gemma3_decoder_block.py, gemma3_backbone.py, gemma3_layers.py). "
    + _NOTES_GEMMA_COMMON
    + "; plus decoder_block_i/post_attention_norm/scale and "
    "decoder_block_i/post_ffw_norm/scale (use_post_*_norm=True), and the "
    "qk-norm leaves decoder_block_i/attention/query_norm/scale and "
    "decoder_block_i/attention/key_norm/scale, each of shape (head_dim,) "
    "(RMSNormalization built on the (b,t,heads,head_dim) projection output, "
    "shared across heads). FFN width: Gemma3Backbone passes "
    "gate_dim_reduction=1, so intermediate_dim (2048) IS the per-branch f "
    "(unlike Gemma 1/2's //2). Text only: vision_encoder=None, so no vision "
    "tower or interleave_embeddings variables. Sliding-window / RoPE settings "
    "do not change shapes. No non-trainable variables."
)


_NOTES_VIT = (
    "vit_patching_and_embedding/class_token [1, 1, D] (one token), patch_embedding/kernel a Conv2D "
    "kernel [16, 16, 3, D], position_embedding/embeddings [num_patches + 1, D] (a keras Embedding); "
    "vit_encoder/transformer_block_i/mha/{query,key,value}/kernel [D, heads, head_dim] (keras "
    "MultiHeadAttention's EinsumDense), attention_output/kernel [heads, head_dim, D], "
    "mlp/dense_1 [D, mlp_dim], mlp/dense_2 [mlp_dim, D]; LayerNormalization gamma/beta (ln_1, ln_2, "
    "final ln). No classifier (the backbone)."
)


_NOTES_PALI_GEMMA = (
    "The decoder is keras-hub's Gemma (decoder_block_i/attention/{query,key,value} heads-first "
    "EinsumDense kernels [heads, D, 256], ffw_gating/ffw_gating_2 [D, intermediate_dim // 2], "
    "ffw_linear, token_embedding/embeddings tied). The vision tower, image_encoder "
    "(pali_gemma_vit.py): encoder_embeddings/embedding_conv [14, 14, 3, 1152], "
    "position_embedding/embeddings [(224 / 14)**2, 1152] (no class token), "
    "encoder_block_i/multi_head_attention/{query,key,value,out}_proj Dense kernels [1152, 1152] "
    "(heads split by 'ops.reshape(x, (batch, seq, self.num_heads, self.head_dim))', head_dim = "
    "1152 // 16 = 72), mlp_dense_1 [1152, 4304], mlp_dense_2, layer_norm_1/2 and "
    "encoder_layer_norm gamma/beta; image_classifier [1152, 2048] projects into the decoder."
)


_NOTES_LORA = (
    " LoRA (keras 3.15.1 einsum_dense.py / dense.py enable_lora): lora_kernel_a has the "
    "kernel's shape with its last axis the rank, lora_kernel_b [rank, kernel.shape[-1]]; "
    "the layer adds einsum(equation, x, lora_kernel_a) @ lora_kernel_b. keras-hub's "
    "Backbone.enable_lora targets the layers its default_lora_layer_names() names (query, "
    "value, query_dense, value_dense; PaliGemma adds its tower's query_proj and value_proj) "
    "and freezes everything else, so the trainable variables are the factors (and those "
    "layers' biases)."
)


def _notes(cls_name):
    return {
        "LlamaBackbone": _NOTES_LLAMA,
        "GemmaBackbone": _NOTES_GEMMA,
        "Gemma3Backbone": _NOTES_GEMMA3,
        "ViTBackbone": _NOTES_VIT,
        "PaliGemmaBackbone": _NOTES_PALI_GEMMA,
    }[cls_name]


def _import_keras():
    if "keras" in sys.modules:
        backend = sys.modules["keras"].backend.backend()
        if backend != "jax":
            raise RuntimeError(
                f"keras already imported with backend {backend!r}; "
                "record_keras_hub needs KERAS_BACKEND=jax set before import"
            )
    os.environ["KERAS_BACKEND"] = "jax"
    import keras  # noqa: F401
    import keras_hub  # noqa: F401

    return keras, keras_hub


def _standard_config(cls_name, kw):
    d_model = kw["hidden_dim"]
    heads = kw.get("num_query_heads")
    if cls_name == "LlamaBackbone":
        head_dim = d_model // heads
        mlp_dim = kw["intermediate_dim"]
        tied = bool(kw.get("tie_word_embeddings", False))
    elif cls_name == "GemmaBackbone":
        head_dim = kw["head_dim"]
        mlp_dim = kw["intermediate_dim"] // 2
        tied = True
    elif cls_name == "PaliGemmaBackbone":
        vit = kw["vit_hidden_dim"]
        return {
            "vocab_size": kw["vocabulary_size"], "d_model": d_model, "num_layers": kw["num_layers"],
            "num_heads": heads, "num_kv_heads": kw["num_key_value_heads"], "head_dim": kw["head_dim"],
            "mlp_dim": kw["intermediate_dim"] // 2, "tied_embeddings": True, "scanned": False,
            "layer_axis": None,
            "vision": {
                "d_model": vit, "num_layers": kw["vit_num_layers"], "num_heads": kw["vit_num_heads"],
                "head_dim": vit // kw["vit_num_heads"], "mlp_dim": kw["vit_intermediate_dim"],
                "image_size": kw["image_size"], "patch_size": kw["vit_patch_size"], "num_channels": 3,
            },
        }
    elif cls_name == "ViTBackbone":
        return {
            "vocab_size": None, "d_model": d_model, "num_layers": kw["num_layers"],
            "num_heads": kw["num_heads"], "num_kv_heads": kw["num_heads"],
            "head_dim": d_model // kw["num_heads"], "mlp_dim": kw["mlp_dim"],
            "tied_embeddings": False, "scanned": False, "layer_axis": None,
            "image_size": kw["image_shape"][0], "patch_size": kw["patch_size"],
            "num_channels": kw["image_shape"][2], "num_labels": None,
        }
    elif cls_name == "Gemma3Backbone":
        head_dim = kw["head_dim"]
        mlp_dim = kw["intermediate_dim"]  # gate_dim_reduction=1
        tied = True
    else:  # pragma: no cover
        raise ValueError(cls_name)
    return {
        "vocab_size": kw["vocabulary_size"],
        "d_model": d_model,
        "num_layers": kw["num_layers"],
        "num_heads": heads,
        "num_kv_heads": kw["num_key_value_heads"],
        "head_dim": head_dim,
        "mlp_dim": mlp_dim,
        "tied_embeddings": tied,
        "scanned": False,
        "layer_axis": None,
    }


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=repr))


def _build_backbone(name):
    """Return (backbone, trainable variables, duplicate-path notes)."""
    keras, keras_hub = _import_keras()
    from keras.src.backend.common import global_state
    from keras.src.backend.common.stateless_scope import StatelessScope

    cls_name, kw, _, rank = _spec(name)
    cls = getattr(keras_hub.models, cls_name)
    before = list(
        global_state.get_global_attribute("uninitialized_variables", []) or []
    )
    with StatelessScope(initialize_variables=False):
        backbone = cls(**kw)
        if rank is not None:
            # enable_lora reads the kernels' shapes and adds the factors as
            # uninitialized variables too; the kernels become non-trainable.
            backbone.enable_lora(rank=rank)
    # Our variables stay uninitialized on purpose: drop them from keras's
    # global "initialize later" list so nothing ever allocates them.
    global_state.set_global_attribute("uninitialized_variables", before)
    return backbone


def build(name):
    """Build ``name`` abstractly; return (abstract_params, config_dict).

    abstract_params: nested dict (``variable.path`` split on "/") of
    ``jax.ShapeDtypeStruct`` over the backbone's trainable variables.
    """
    if name not in NAMES:
        raise KeyError(f"unknown name {name!r}; known: {NAMES}")
    import jax

    cls_name, kw, _, rank = _spec(name)
    backbone = _build_backbone(name)
    tree = {}
    variables = [(v.path, v) for v in backbone.trainable_variables]
    if len({path for path, _ in variables}) < len(variables):
        # Two towers share paths (CLIP, SigLIP): key every variable by its
        # top-level layer too, as the README tells users to.
        variables = [
            (f"{layer.name}/{v.path}", v) for layer in backbone.layers for v in layer.trainable_variables
        ]
    for path, v in variables:
        parts = path.split("/")
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = jax.ShapeDtypeStruct(tuple(v.shape), v.dtype)
    config = _standard_config(cls_name, kw)
    if rank is not None:
        config["lora_rank"] = rank
    config["native"] = _jsonable(backbone.get_config())
    del backbone
    return tree, config


def _key_name(k):
    import jax

    if isinstance(k, jax.tree_util.DictKey):
        return k.key
    if isinstance(k, jax.tree_util.SequenceKey):
        return k.idx
    if isinstance(k, jax.tree_util.GetAttrKey):
        return k.name
    raise TypeError(type(k))


def record(name):
    keras, keras_hub = _import_keras()
    import jax

    tree, config = build(name)
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    leaves = [
        {
            "path": [_key_name(k) for k in path],
            "shape": list(leaf.shape),
            "dtype": str(leaf.dtype),
        }
        for path, leaf in flat
    ]
    cls_name, kw, desc, rank = _spec(name)
    args = ", ".join(f"{k}={v!r}" for k, v in kw.items())
    n_params = sum(int(_prod(leaf["shape"])) for leaf in leaves)
    return {
        "name": name,
        "library": "keras-hub",
        "library_version": keras_hub.__version__,
        "recorded_with": (
            f"python {platform.python_version()}, jax {jax.__version__}, "
            f"keras {keras.__version__}, KERAS_BACKEND=jax, CPU; "
            + PIP_COMMANDS
        ),
        "model": (
            f"keras_hub.models.{cls_name}({args})  # {desc}; "
            f"{n_params:,} trainable params"
        ),
        "how": (
            "with keras.src.backend.common.stateless_scope.StatelessScope("
            "initialize_variables=False): backbone = cls(**kwargs)  "
            "# uninitialized variables, graph traced via jax.eval_shape, no "
            "weights allocated; tree = {v.path.split('/'): "
            "ShapeDtypeStruct(v.shape, v.dtype) for v in "
            "backbone.trainable_variables}"
            + (f"; backbone.enable_lora(rank={rank}) inside the same scope, before" if rank else "")
        ),
        "config": config,
        "notes": _notes(cls_name) + (_NOTES_LORA if rank else ""),
        **({"user_passes": _USER_PASSES[name]} if name in _USER_PASSES else {}),
        "leaves": leaves,
    }


def _prod(xs):
    out = 1
    for x in xs:
        out *= int(x)
    return out


def _dump(rec):
    # One leaf per line: small, diff-friendly, still plain JSON.
    head = {k: v for k, v in rec.items() if k != "leaves"}
    text = json.dumps(head, indent=2)
    assert text.endswith("}")
    lines = [json.dumps(leaf, separators=(", ", ": ")) for leaf in rec["leaves"]]
    body = ",\n    ".join(lines)
    return text[:-1].rstrip() + ',\n  "leaves": [\n    ' + body + "\n  ]\n}\n"


def main(names=None):
    os.makedirs(TREES, exist_ok=True)
    for name in names or NAMES:
        rec = record(name)
        path = os.path.join(TREES, f"{name}.json")
        with open(path, "w") as f:
            f.write(_dump(rec))
        print(f"{path}: {len(rec['leaves'])} leaves; {rec['model']}")


if __name__ == "__main__":
    main(sys.argv[1:] or None)
