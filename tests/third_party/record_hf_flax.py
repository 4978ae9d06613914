"""Record HuggingFace ``transformers`` 4.x Flax parameter trees (paths + shapes only).

See ``FORMAT.md`` beside this file for the JSON format.  Nothing is downloaded:
every model is built from a config written out below, and parameters are only
ever abstract (``jax.eval_shape``), so even the 7B configs record in seconds.

The recorded tree is exactly what a user hands to an optax optimizer:
``FlaxPreTrainedModel.init_weights`` returns ``module.init(...)["params"]``,
i.e. the contents of ``model.params`` (the dict *under* ``"params"``; its top
level is ``{"model": ...}`` / ``{"transformer": ...}`` plus ``"lm_head"`` when
untied).  ``transformers`` is imported only inside functions, so this module is
importable without it.

Install (transformers 5 dropped Flax; 4.57.6 is the last 4.x)::

    pip install "transformers==4.57.6" "jax[cpu]==0.10.2" "flax==0.12.8"

Run: ``python tests/third_party/record_hf_flax.py`` (writes ``trees/hf_flax_*.json``).
"""

from __future__ import annotations

import functools
import json
import os
import platform

LIBRARY = "transformers"
PIP_INSTALL = 'pip install "transformers==4.57.6" "jax[cpu]==0.10.2" "flax==0.12.8"'
INPUT_SHAPE = (1, 8)

NAMES = (
    "hf_flax_llama2_7b",
    "hf_flax_llama3_8b",
    "hf_flax_mistral_7b",
    "hf_flax_gemma_2b",
    "hf_flax_gpt2",
    "hf_flax_bloom_560m",
    "hf_flax_gptneo_125m",
    "hf_flax_distilbert",
    "hf_flax_vit_base",
    "hf_flax_dinov2_small",
)

# name -> (model class, config class, config kwargs)
_SPECS = {
    # meta-llama/Llama-2-7b-hf
    "hf_flax_llama2_7b": (
        "FlaxLlamaForCausalLM",
        "LlamaConfig",
        dict(
            vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=32, intermediate_size=11008, max_position_embeddings=4096,
            rms_norm_eps=1e-5, tie_word_embeddings=False, rope_theta=10000.0,
        ),
    ),
    # meta-llama/Meta-Llama-3-8B (GQA variant; rope_scaling omitted)
    "hf_flax_llama3_8b": (
        "FlaxLlamaForCausalLM",
        "LlamaConfig",
        dict(
            vocab_size=128256, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=8, intermediate_size=14336, max_position_embeddings=8192,
            rms_norm_eps=1e-5, tie_word_embeddings=False, rope_theta=500000.0,
            bos_token_id=128000, eos_token_id=128001,
        ),
    ),
    # mistralai/Mistral-7B-v0.1
    "hf_flax_mistral_7b": (
        "FlaxMistralForCausalLM",
        "MistralConfig",
        dict(
            vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=8, intermediate_size=14336, max_position_embeddings=32768,
            rms_norm_eps=1e-5, tie_word_embeddings=False, rope_theta=10000.0, sliding_window=4096,
        ),
    ),
    # google/gemma-2b
    "hf_flax_gemma_2b": (
        "FlaxGemmaForCausalLM",
        "GemmaConfig",
        dict(
            vocab_size=256000, hidden_size=2048, num_hidden_layers=18, num_attention_heads=8,
            num_key_value_heads=1, head_dim=256, intermediate_size=16384, max_position_embeddings=8192,
            rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="gelu",
            hidden_activation="gelu_pytorch_tanh",
        ),
    ),
    # openai-community/gpt2 (124M)
    "hf_flax_gpt2": (
        "FlaxGPT2LMHeadModel",
        "GPT2Config",
        dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None),
    ),
    # bigscience/bloom-560m
    "hf_flax_bloom_560m": (
        "FlaxBloomForCausalLM",
        "BloomConfig",
        dict(vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16, layer_norm_epsilon=1e-5),
    ),
    # EleutherAI/gpt-neo-125m
    "hf_flax_gptneo_125m": (
        "FlaxGPTNeoForCausalLM",
        "GPTNeoConfig",
        dict(
            vocab_size=50257, hidden_size=768, num_layers=12, num_heads=12,
            attention_types=[[["global", "local"], 6]], max_position_embeddings=2048,
            intermediate_size=None,
        ),
    ),
    # distilbert/distilbert-base-uncased
    "hf_flax_distilbert": (
        "FlaxDistilBertForMaskedLM",
        "DistilBertConfig",
        dict(vocab_size=30522, dim=768, n_layers=6, n_heads=12, hidden_dim=3072, max_position_embeddings=512),
    ),
    # google/vit-base-patch16-224 (ImageNet-1k classifier)
    "hf_flax_vit_base": (
        "FlaxViTForImageClassification",
        "ViTConfig",
        dict(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
            image_size=224, patch_size=16, num_channels=3, num_labels=1000,
        ),
    ),
    # facebook/dinov2-small (the backbone, as fine-tuned)
    "hf_flax_dinov2_small": (
        "FlaxDinov2Model",
        "Dinov2Config",
        dict(
            hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
            image_size=518, patch_size=14, num_channels=3, layerscale_value=1.0,
        ),
    ),
}

# Image models take pixels [batch, height, width, channels], not token ids.
_INPUT_SHAPES = {
    "hf_flax_vit_base": (1, 224, 224, 3),
    "hf_flax_dinov2_small": (1, 518, 518, 3),
}

_NOTES = {
    "llama": (
        "params = FlaxLlamaForCausalLM(config, _do_init=False).init_weights(...) == "
        "module.init(...)['params'] (the model.params dict; no outer 'params' key). "
        "Layers are separate subtrees model/layers/'0'..'N-1' (str keys, unscanned). "
        "All projections are flax nn.Dense: kernel [in, out]; q_proj out = num_heads*head_dim, "
        "k_proj/v_proj out = num_key_value_heads*head_dim, split by '_split_heads: return hidden_states.reshape(hidden_states.shape[:2] + (num_heads, self.head_dim))' (heads contiguous on the out axis). "
        "RMSNorm leaf is named 'weight' (not 'scale'), shape [hidden]. "
        "Embedding leaf model/embed_tokens/embedding [vocab, hidden]. "
        "tie_word_embeddings=False -> separate lm_head/kernel [hidden, vocab] leaf."
    ),
    "mistral": (
        "Same layout as Llama (modeling_flax_mistral copies Llama): nn.Dense kernels [in, out], "
        "k_proj/v_proj out = num_key_value_heads*head_dim, RMSNorm leaf 'weight', "
        "layers under model/layers/'0'.., untied lm_head/kernel [hidden, vocab]. "
        "sliding_window only affects the mask, not params."
    ),
    "gemma": (
        "Llama-like layout: model/embed_tokens/embedding [vocab, hidden], model/layers/'i'/self_attn/"
        "{q,k,v,o}_proj/kernel (nn.Dense [in, out]; q out = num_heads*head_dim = 8*256 = 2048, "
        "k/v out = 1*256), mlp/{gate,up,down}_proj/kernel. RMSNorm leaf 'weight' is applied as "
        "'return (1 + self.weight) * ...' but initialised with jnp.ones (HF Flax quirk; torch inits zeros). "
        "tie_word_embeddings=True: no lm_head leaf; the head reuses the embedding: "
        "'shared_kernel = self.model.variables[\"params\"][\"embed_tokens\"][\"embedding\"].T; "
        "lm_logits = self.lm_head.apply({\"params\": {\"kernel\": shared_kernel}}, hidden_states)'."
    ),
    "gpt2": (
        "FlaxConv1D kernels are stored [out, in] (transposed vs nn.Dense and vs torch Conv1D's [in, out]): "
        "'kernel = self.param(\"kernel\", jax.nn.initializers.normal(stddev=0.02), (self.features, inputs.shape[-1]))' "
        "then 'kernel = jnp.asarray(kernel.transpose(), self.dtype)' before the dot_general. "
        "So c_attn/kernel is [3*n_embd, n_embd] = [2304, 768] with fused q,k,v contiguous on axis 0 "
        "(attention does 'query, key, value = jnp.split(qkv_out, 3, axis=2)' then "
        "'_split_heads: reshape(hidden_states.shape[:2] + (self.num_heads, self.head_dim))'), "
        "mlp/c_fc/kernel [3072, 768], mlp/c_proj/kernel [768, 3072], attn/c_proj/kernel [768, 768]. "
        "Layers under transformer/h/'0'..'11'; layer norms ln_1/ln_2/ln_f with 'scale'/'bias'; "
        "wpe/embedding [1024, 768]. tie_word_embeddings=True: no lm_head leaf; "
        "'shared_kernel = self.transformer.variables[\"params\"][\"wte\"][\"embedding\"].T'."
    ),
    "bloom": (
        "query_key_value is an nn.Dense: kernel [hidden, 3*hidden] = [1024, 3072] ([in, out]). "
        "Its output axis is interleaved PER HEAD as [num_heads, 3, head_dim]: "
        "'_split_heads: return hidden_states.reshape(hidden_states.shape[:-1] + (self.num_heads, self.head_dim * 3))' "
        "then 'query, key, value = jnp.split(fused_qkv, 3, axis=-1)'. Bias [3072] likewise. "
        "Layers under transformer/h/'0'..'23'; word_embeddings_layernorm after the embedding; "
        "no position embeddings (ALiBi). tie_word_embeddings=True: no lm_head leaf; "
        "'shared_kernel = self.transformer.variables[\"params\"][\"word_embeddings\"][\"embedding\"].T'."
    ),
}


_NOTES["gptneo"] = (
    "GPT-2's names on nn.Dense kernels ([in, out], not FlaxConv1D): transformer/h/'i'/attn/attention/"
    "{q,k,v}_proj/kernel [768, 768] (no bias), out_proj/kernel [768, 768] + bias; mlp/c_fc/kernel "
    "[768, 3072] and mlp/c_proj/kernel [3072, 768] ('self.c_fc = nn.Dense(intermediate_size, ...)'). "
    "Heads split by '_split_heads: reshape(hidden_states.shape[:2] + (self.num_heads, self.head_dim))'. "
    "wte/embedding [vocab, 768], wpe/embedding [2048, 768], layer norms ln_1/ln_2/ln_f (scale, bias). "
    "Tied head: no lm_head leaf."
)
_NOTES["distilbert"] = (
    "distilbert/embeddings/{word,position}_embeddings/embedding, LayerNorm (scale, bias); "
    "distilbert/transformer/layer/'i'/attention/{q,k,v,out}_lin/kernel [768, 768] (nn.Dense [in, out], "
    "heads split by 'shape(x): return x.reshape(bs, -1, self.n_heads, dim_per_head)'), "
    "ffn/lin1/kernel [768, 3072], ffn/lin2/kernel [3072, 768], sa_layer_norm/output_layer_norm; "
    "MLM head: vocab_transform/kernel [768, 768], vocab_layer_norm, vocab_projector is tied to the word "
    "embeddings (only its bias is a leaf)."
)


_NOTES["vit"] = (
    "vit/embeddings/cls_token [1, 1, D] and position_embeddings [1, (image/patch)**2 + 1, D] are raw "
    "self.param leaves ('self.position_embeddings = self.param(\"position_embeddings\", ..., "
    "(1, num_patches + 1, self.config.hidden_size))', added to every image's patch sequence); "
    "patch_embeddings/projection is an nn.Conv kernel [patch, patch, channels, D]. "
    "vit/encoder/layer/'i'/attention/attention/{query,key,value}/kernel [D, D] (nn.Dense [in, out], "
    "heads split by 'reshape(hidden_states.shape[:2] + (self.config.num_attention_heads, head_dim))'), "
    "attention/output/dense, intermediate/dense [D, 3072], output/dense [3072, D], "
    "layernorm_before/layernorm_after; classifier/kernel [D, num_labels]. No pooler."
)
_NOTES["dinov2"] = (
    "As ViT (embeddings/cls_token [1, 1, D], position_embeddings [1, (518/14)**2 + 1, D], "
    "patch_embeddings/projection conv kernel), plus embeddings/mask_token [1, D]; "
    "encoder/layer/'i'/attention/attention/{query,key,value}/kernel [D, D], attention/output/dense, "
    "norm1/norm2, layer_scale1/layer_scale2 'lambda1' [D], mlp/fc1 [D, 4D], mlp/fc2 [4D, D]; "
    "final layernorm. FlaxDinov2Model: no classifier."
)


def _family(name: str) -> str:
    for fam in ("llama", "mistral", "gemma", "gpt2", "bloom", "gptneo", "distilbert", "vit", "dinov2"):
        if fam in name:
            return fam
    raise KeyError(name)


def _jsonable(obj):
    """Recursively make a config dict JSON-able (dtypes, tuples, etc.)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


# Multi-head families: (width, layers, heads, MLP width or None for 4 * width)
# as each transformers config names them.
_MHA_FIELDS = {
    "gpt2": ("n_embd", "n_layer", "n_head", "n_inner"),
    "bloom": ("hidden_size", "n_layer", "n_head", None),  # BloomMLP: dense_h_to_4h
    "gptneo": ("hidden_size", "num_layers", "num_heads", "intermediate_size"),
    "distilbert": ("dim", "n_layers", "n_heads", "hidden_dim"),
}
# Vision transformers: no vocabulary, patches of an image instead.
_VISION = ("vit", "dinov2")


def config_fields(family: str, cfg) -> dict:
    """The standard config fields (FORMAT.md) of a transformers config;
    families not in ``_MHA_FIELDS`` are Llama-like (GQA, ``head_dim``)."""
    if family in _VISION:
        d, heads = cfg.hidden_size, cfg.num_attention_heads
        mlp = getattr(cfg, "intermediate_size", None) or int(d * cfg.mlp_ratio)
        return dict(
            vocab_size=None, d_model=d, num_layers=cfg.num_hidden_layers, num_heads=heads,
            num_kv_heads=heads, head_dim=d // heads, mlp_dim=mlp, tied_embeddings=False,
            image_size=cfg.image_size, patch_size=cfg.patch_size, num_channels=cfg.num_channels,
            num_labels=cfg.num_labels if family == "vit" else None,
        )
    if family in _MHA_FIELDS:
        width, layers, heads_name, mlp = _MHA_FIELDS[family]
        d, heads = getattr(cfg, width), getattr(cfg, heads_name)
        mlp_dim = getattr(cfg, mlp) if mlp is not None else None
        return dict(
            vocab_size=cfg.vocab_size, d_model=d, num_layers=getattr(cfg, layers), num_heads=heads,
            num_kv_heads=heads, head_dim=d // heads,
            mlp_dim=mlp_dim if mlp_dim is not None else 4 * d,
            tied_embeddings=bool(cfg.tie_word_embeddings),
        )
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return dict(
        vocab_size=cfg.vocab_size, d_model=cfg.hidden_size, num_layers=cfg.num_hidden_layers,
        num_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads,
        head_dim=head_dim, mlp_dim=cfg.intermediate_size,
        tied_embeddings=bool(cfg.tie_word_embeddings),
    )


def _standard_config(name: str, cfg) -> dict:
    return config_fields(_family(name), cfg)


def _input_shape(name: str) -> tuple[int, ...]:
    return _INPUT_SHAPES.get(name, INPUT_SHAPE)


def _make_model(name: str):
    import transformers

    model_cls, config_cls, kwargs = _SPECS[name]
    config = getattr(transformers, config_cls)(**kwargs)
    # _do_init=False: the constructor only runs jax.eval_shape, nothing is allocated.
    model = getattr(transformers, model_cls)(config, input_shape=_input_shape(name), _do_init=False)
    return model, config


def build(name: str):
    """Return ``(abstract_params, config_dict)`` for fixture ``name``.

    ``abstract_params`` is a pytree of ``jax.ShapeDtypeStruct`` with the structure
    of ``model.params`` (what ``init_weights`` returns), i.e. what goes to optax.
    """
    import jax

    model, config = _make_model(name)
    init_fn = functools.partial(model.init_weights, input_shape=_input_shape(name))
    params = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
    # flax >= 0.7 returns a plain dict; older ones a FrozenDict -> normalise.
    try:
        from flax.core import unfreeze

        params = unfreeze(params)
    except ImportError:  # pragma: no cover
        pass
    cfg = _standard_config(name, config)
    cfg.update(scanned=False, layer_axis=None, native=_jsonable(config.to_dict()))
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


def record(name: str) -> dict:
    import flax
    import jax
    import transformers

    params, cfg = build(name)
    model_cls, config_cls, kwargs = _SPECS[name]
    leaves = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        leaves.append(
            {
                "path": [_key_to_json(k) for k in path],
                "shape": [int(s) for s in leaf.shape],
                "dtype": str(leaf.dtype),
            }
        )
    kw = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return {
        "name": name,
        "library": LIBRARY,
        "library_version": transformers.__version__,
        "recorded_with": (
            f"python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__}, "
            f"{PIP_INSTALL}"
        ),
        "model": f"transformers.{model_cls}(transformers.{config_cls}({kw}), input_shape={_input_shape(name)}, _do_init=False)",
        "how": (
            f"jax.eval_shape(functools.partial(model.init_weights, input_shape={_input_shape(name)}), "
            "jax.random.PRNGKey(0))  # == module.init(...)['params'] == model.params structure"
        ),
        "notes": _NOTES[_family(name)],
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
