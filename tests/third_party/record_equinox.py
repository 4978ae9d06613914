"""Record Equinox parameter trees (paths + shapes only).

See ``FORMAT.md`` beside this file for the JSON format.  Equinox ships layers,
not model zoos, so each model here is a small ``eqx.Module`` class written below
out of Equinox's own layers only (``eqx.nn.Embedding``, ``eqx.nn.Linear``,
``eqx.nn.MultiheadAttention``, ``eqx.nn.LayerNorm``, ``eqx.nn.RMSNorm``,
``eqx.nn.RotaryPositionalEmbedding``, ``eqx.nn.Conv2d``, ``eqx.nn.MaxPool2d``),
shaped like GPT-2 124M, Llama-3.2-1B and a small CIFAR CNN.  Nothing is
downloaded and nothing is allocated: the model is built under
``eqx.filter_eval_shape``, so the 1B model records in seconds.

The recorded tree is exactly what an Equinox user hands to optax::

    params = eqx.filter(model, eqx.is_inexact_array)
    opt_state = optimizer.init(params)

i.e. the model pytree itself (``eqx.Module`` fields flatten with one
``GetAttrKey`` per field, Python lists with ``SequenceKey``), with every
non-float leaf (Dropout's ``p``/``inference``, ...) and every absent bias
replaced by ``None``, which ``jax.tree_util`` drops.  ``equinox`` is imported
only inside functions, so this module is importable without it.

Install (equinox 0.13.8 is the newest release; it accepts jax 0.10.2 as is)::

    pip install "equinox==0.13.8" "jaxtyping==0.3.11" "wadler-lindig==0.1.8" "jax[cpu]==0.10.2"

Run: ``python tests/third_party/record_equinox.py`` (writes ``trees/equinox_*.json``).
"""

from __future__ import annotations

import functools
import json
import os
import platform

from record_hf_flax import _key_to_json  # the recorders' shared JSON path keys

LIBRARY = "equinox"
PIP_INSTALL = (
    'pip install "equinox==0.13.8" "jaxtyping==0.3.11" "wadler-lindig==0.1.8" "jax[cpu]==0.10.2"'
)

NAMES = (
    "equinox_gpt2_small",
    "equinox_llama_1b",
    "equinox_cnn",
)

# name -> (model class name in _classes(), constructor kwargs)
_SPECS = {
    # openai-community/gpt2 (124M) shape, but with an UNTIED lm_head.
    "equinox_gpt2_small": (
        "GPT2",
        dict(vocab_size=50257, max_positions=1024, d_model=768, num_layers=12, num_heads=12, mlp_dim=3072),
    ),
    # meta-llama/Llama-3.2-1B shape (GQA, tied embeddings).
    "equinox_llama_1b": (
        "Llama",
        dict(
            vocab_size=128256, d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8,
            head_dim=64, mlp_dim=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
        ),
    ),
    # CIFAR-sized input 3x32x32: conv3 -> 30, pool2 -> 15, conv3 -> 13, pool2 -> 6; 128*6*6 = 4608.
    "equinox_cnn": (
        "CNN",
        dict(in_channels=3, image_size=32, channels=(64, 128), kernel_size=3, hidden=256, num_classes=10),
    ),
}

# Quotes below are from equinox 0.13.8's own source (equinox/nn/*.py).
_EQX_LAYOUT = (
    "Equinox layouts (equinox 0.13.8 source): eqx.nn.Linear: 'wshape = (out_features_, in_features_)', "
    "'bshape = (out_features_,)', applied as 'x = self.weight @ x' then 'x = x + self.bias' "
    "(weight [out, in], torch layout; use_bias=False stores bias=None, dropped by the filter). "
    "eqx.nn.Embedding: 'self.weight = jrandom.normal(key, (num_embeddings, embedding_size), dtype=dtype)', "
    "lookup 'return self.weight[x]' (weight [vocab, d]). "
    "eqx.nn.LayerNorm / eqx.nn.RMSNorm: 'self.weight = jnp.ones(shape, dtype=dtype) if use_weight else None', "
    "'self.bias = jnp.zeros(shape, dtype=dtype) if use_bias else None' (both default use_weight=True, "
    "use_bias=True; leaves 'weight'/'bias' of the normalised shape). "
)

_NOTES = {
    "gpt2": (
        "Model class GPT2 defined in record_equinox.py from Equinox layers only; params = "
        "eqx.filter(model, eqx.is_inexact_array). " + _EQX_LAYOUT +
        "Attention is eqx.nn.MultiheadAttention(num_heads=12, query_size=768, use_query_bias=True, "
        "use_key_bias=True, use_value_bias=True, use_output_bias=True): fields query_proj/key_proj/"
        "value_proj/output_proj, each an eqx.nn.Linear ('self.query_proj = Linear(query_size, "
        "num_heads * qk_size, ...)', 'self.output_proj = Linear(num_heads * vo_size, output_size, ...)'), "
        "so query_proj/key_proj/value_proj weight [H*D, d] = [768, 768] with heads contiguous on axis 0 "
        "(the OUT axis): '_project: projection = jax.vmap(proj)(x); return projection.reshape(seq_length, "
        "self.num_heads, -1)' -> (seq, num_heads, qk_size); output_proj weight [d, H*D] = [768, 768] "
        "consumes 'attn.reshape(query_seq_length, -1)'. Its Dropout field holds no float array (p is a "
        "Python float) and is filtered out. Blocks are a Python list field 'blocks' -> SequenceKey ints "
        "0..11 (unscanned). Per block: attn_norm (LayerNorm), attn, mlp_norm (LayerNorm), mlp.mlp_in "
        "Linear(768, 3072) weight [3072, 768], mlp.mlp_out Linear(3072, 768) weight [768, 3072]. "
        "token_embedding.weight [50257, 768], position_embedding.weight [1024, 768], final_norm, and an "
        "UNTIED lm_head = Linear(768, 50257, use_bias=False): weight [50257, 768] (vocab on axis 0, "
        "same orientation as the embedding)."
    ),
    "llama": (
        "Model class Llama defined in record_equinox.py from Equinox layers only; params = "
        "eqx.filter(model, eqx.is_inexact_array). " + _EQX_LAYOUT +
        "Attention is written out (GQA; eqx.nn.MultiheadAttention has no kv-head count): self_attn.q_proj "
        "Linear(2048, 32*64, use_bias=False) weight [2048, 2048], k_proj/v_proj Linear(2048, 8*64, "
        "use_bias=False) weight [512, 2048], o_proj Linear(2048, 2048, use_bias=False) weight [2048, 2048]; "
        "heads are split like eqx.nn.MultiheadAttention does, from the OUT axis: "
        "'jax.vmap(self.q_proj)(x).reshape(seq, num_heads, head_dim)' (heads contiguous on weight axis 0). "
        "self_attn.rotary is eqx.nn.RotaryPositionalEmbedding(64, theta=500000.0): all its fields are "
        "static, so it adds no leaf. mlp.gate_proj/up_proj Linear(2048, 8192, use_bias=False) weight "
        "[8192, 2048], mlp.down_proj Linear(8192, 2048, use_bias=False) weight [2048, 8192]. "
        "input_layernorm/post_attention_layernorm/norm are eqx.nn.RMSNorm(2048, eps=1e-5, use_bias=False): "
        "one leaf 'weight' [2048] each (RMSNorm defaults to use_bias=True, which would add a 'bias' leaf). "
        "Layers are a Python list field 'layers' -> SequenceKey ints 0..15 (unscanned). "
        "embed_tokens.weight [128256, 2048]; tied head: no lm_head leaf, logits = "
        "'self.embed_tokens.weight @ x'."
    ),
    "cnn": (
        "Model class CNN defined in record_equinox.py from Equinox layers only; params = "
        "eqx.filter(model, eqx.is_inexact_array). " + _EQX_LAYOUT +
        "eqx.nn.Conv2d: 'wshape = (out_channels, grouped_in_channels) + kernel_size' (OIHW, torch layout, "
        "used as rhs of lax.conv_general_dilated with default dimension numbers) and "
        "'bshape = (out_channels,) + (1,) * num_spatial_dims', i.e. conv bias is [out, 1, 1], NOT [out]. "
        "layers is a Python list of the four parameterised layers only -> SequenceKey 0..3: "
        "0 Conv2d(3, 64, 3) weight [64, 3, 3, 3] bias [64, 1, 1]; 1 Conv2d(64, 128, 3) weight "
        "[128, 64, 3, 3] bias [128, 1, 1]; 2 Linear(4608, 256) weight [256, 4608]; 3 Linear(256, 10) "
        "weight [10, 256]. Input 3x32x32; relu + eqx.nn.MaxPool2d(2, 2) after each conv (a 'pool' field "
        "with no array leaves), then jnp.ravel: 128*6*6 = 4608."
    ),
}


def _family(name: str) -> str:
    for fam in ("gpt2", "llama", "cnn"):
        if fam in name:
            return fam
    raise KeyError(name)


@functools.cache
def _classes():
    """Define the model classes (needs equinox, so only on first use)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    def _causal_mask(seq):
        return jnp.tril(jnp.ones((seq, seq), dtype=bool))

    class GPT2MLP(eqx.Module):
        mlp_in: eqx.nn.Linear
        mlp_out: eqx.nn.Linear

        def __init__(self, d_model, mlp_dim, *, key):
            k1, k2 = jax.random.split(key)
            self.mlp_in = eqx.nn.Linear(d_model, mlp_dim, key=k1)
            self.mlp_out = eqx.nn.Linear(mlp_dim, d_model, key=k2)

        def __call__(self, x):
            return self.mlp_out(jax.nn.gelu(self.mlp_in(x)))

    class GPT2Block(eqx.Module):
        attn_norm: eqx.nn.LayerNorm
        attn: eqx.nn.MultiheadAttention
        mlp_norm: eqx.nn.LayerNorm
        mlp: GPT2MLP

        def __init__(self, d_model, num_heads, mlp_dim, *, key):
            k1, k2 = jax.random.split(key)
            self.attn_norm = eqx.nn.LayerNorm(d_model)
            self.attn = eqx.nn.MultiheadAttention(
                num_heads=num_heads, query_size=d_model, use_query_bias=True, use_key_bias=True,
                use_value_bias=True, use_output_bias=True, key=k1,
            )
            self.mlp_norm = eqx.nn.LayerNorm(d_model)
            self.mlp = GPT2MLP(d_model, mlp_dim, key=k2)

        def __call__(self, x):  # x: [seq, d]
            h = jax.vmap(self.attn_norm)(x)
            x = x + self.attn(h, h, h, mask=_causal_mask(x.shape[0]))
            return x + jax.vmap(self.mlp)(jax.vmap(self.mlp_norm)(x))

    class GPT2(eqx.Module):
        token_embedding: eqx.nn.Embedding
        position_embedding: eqx.nn.Embedding
        blocks: list
        final_norm: eqx.nn.LayerNorm
        lm_head: eqx.nn.Linear

        def __init__(self, vocab_size, max_positions, d_model, num_layers, num_heads, mlp_dim, *, key):
            keys = jax.random.split(key, num_layers + 3)
            self.token_embedding = eqx.nn.Embedding(vocab_size, d_model, key=keys[0])
            self.position_embedding = eqx.nn.Embedding(max_positions, d_model, key=keys[1])
            self.blocks = [GPT2Block(d_model, num_heads, mlp_dim, key=k) for k in keys[3:]]
            self.final_norm = eqx.nn.LayerNorm(d_model)
            self.lm_head = eqx.nn.Linear(d_model, vocab_size, use_bias=False, key=keys[2])

        def __call__(self, tokens):  # tokens: int [seq]
            pos = jnp.arange(tokens.shape[0])
            x = jax.vmap(self.token_embedding)(tokens) + jax.vmap(self.position_embedding)(pos)
            for block in self.blocks:
                x = block(x)
            return jax.vmap(self.lm_head)(jax.vmap(self.final_norm)(x))

    class LlamaAttention(eqx.Module):
        q_proj: eqx.nn.Linear
        k_proj: eqx.nn.Linear
        v_proj: eqx.nn.Linear
        o_proj: eqx.nn.Linear
        rotary: eqx.nn.RotaryPositionalEmbedding
        num_heads: int = eqx.field(static=True)
        num_kv_heads: int = eqx.field(static=True)
        head_dim: int = eqx.field(static=True)

        def __init__(self, d_model, num_heads, num_kv_heads, head_dim, rope_theta, *, key):
            kq, kk, kv, ko = jax.random.split(key, 4)
            self.q_proj = eqx.nn.Linear(d_model, num_heads * head_dim, use_bias=False, key=kq)
            self.k_proj = eqx.nn.Linear(d_model, num_kv_heads * head_dim, use_bias=False, key=kk)
            self.v_proj = eqx.nn.Linear(d_model, num_kv_heads * head_dim, use_bias=False, key=kv)
            self.o_proj = eqx.nn.Linear(num_heads * head_dim, d_model, use_bias=False, key=ko)
            self.rotary = eqx.nn.RotaryPositionalEmbedding(head_dim, theta=rope_theta)
            self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim

        def __call__(self, x):  # x: [seq, d]
            seq = x.shape[0]
            q = jax.vmap(self.q_proj)(x).reshape(seq, self.num_heads, self.head_dim)
            k = jax.vmap(self.k_proj)(x).reshape(seq, self.num_kv_heads, self.head_dim)
            v = jax.vmap(self.v_proj)(x).reshape(seq, self.num_kv_heads, self.head_dim)
            rope = jax.vmap(self.rotary, in_axes=1, out_axes=1)
            q, k = rope(q), rope(k)
            rep = self.num_heads // self.num_kv_heads
            k, v = jnp.repeat(k, rep, axis=1), jnp.repeat(v, rep, axis=1)
            logits = jnp.einsum("qhd,khd->hqk", q, k) / jnp.sqrt(self.head_dim).astype(q.dtype)
            logits = jnp.where(_causal_mask(seq), logits, jnp.finfo(logits.dtype).min)
            attn = jnp.einsum("hqk,khd->qhd", jax.nn.softmax(logits, axis=-1), v)
            return jax.vmap(self.o_proj)(attn.reshape(seq, -1))

    class LlamaMLP(eqx.Module):
        gate_proj: eqx.nn.Linear
        up_proj: eqx.nn.Linear
        down_proj: eqx.nn.Linear

        def __init__(self, d_model, mlp_dim, *, key):
            k1, k2, k3 = jax.random.split(key, 3)
            self.gate_proj = eqx.nn.Linear(d_model, mlp_dim, use_bias=False, key=k1)
            self.up_proj = eqx.nn.Linear(d_model, mlp_dim, use_bias=False, key=k2)
            self.down_proj = eqx.nn.Linear(mlp_dim, d_model, use_bias=False, key=k3)

        def __call__(self, x):
            return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))

    class LlamaLayer(eqx.Module):
        input_layernorm: eqx.nn.RMSNorm
        self_attn: LlamaAttention
        post_attention_layernorm: eqx.nn.RMSNorm
        mlp: LlamaMLP

        def __init__(self, d_model, num_heads, num_kv_heads, head_dim, mlp_dim, rope_theta, eps, *, key):
            k1, k2 = jax.random.split(key)
            self.input_layernorm = eqx.nn.RMSNorm(d_model, eps=eps, use_bias=False)
            self.self_attn = LlamaAttention(d_model, num_heads, num_kv_heads, head_dim, rope_theta, key=k1)
            self.post_attention_layernorm = eqx.nn.RMSNorm(d_model, eps=eps, use_bias=False)
            self.mlp = LlamaMLP(d_model, mlp_dim, key=k2)

        def __call__(self, x):
            x = x + self.self_attn(jax.vmap(self.input_layernorm)(x))
            return x + jax.vmap(self.mlp)(jax.vmap(self.post_attention_layernorm)(x))

    class Llama(eqx.Module):
        embed_tokens: eqx.nn.Embedding
        layers: list
        norm: eqx.nn.RMSNorm

        def __init__(self, vocab_size, d_model, num_layers, num_heads, num_kv_heads, head_dim, mlp_dim,
                     rope_theta, rms_norm_eps, *, key):
            keys = jax.random.split(key, num_layers + 1)
            self.embed_tokens = eqx.nn.Embedding(vocab_size, d_model, key=keys[0])
            self.layers = [
                LlamaLayer(d_model, num_heads, num_kv_heads, head_dim, mlp_dim, rope_theta, rms_norm_eps, key=k)
                for k in keys[1:]
            ]
            self.norm = eqx.nn.RMSNorm(d_model, eps=rms_norm_eps, use_bias=False)

        def __call__(self, tokens):  # tokens: int [seq]
            x = jax.vmap(self.embed_tokens)(tokens)
            for layer in self.layers:
                x = layer(x)
            x = jax.vmap(self.norm)(x)
            return jax.vmap(lambda h: self.embed_tokens.weight @ h)(x)  # tied head

    class CNN(eqx.Module):
        layers: list
        pool: eqx.nn.MaxPool2d

        def __init__(self, in_channels, image_size, channels, kernel_size, hidden, num_classes, *, key):
            k1, k2, k3, k4 = jax.random.split(key, 4)
            c1, c2 = channels
            side = ((image_size - kernel_size + 1) // 2 - kernel_size + 1) // 2
            self.layers = [
                eqx.nn.Conv2d(in_channels, c1, kernel_size, key=k1),
                eqx.nn.Conv2d(c1, c2, kernel_size, key=k2),
                eqx.nn.Linear(c2 * side * side, hidden, key=k3),
                eqx.nn.Linear(hidden, num_classes, key=k4),
            ]
            self.pool = eqx.nn.MaxPool2d(kernel_size=2, stride=2)

        def __call__(self, x):  # x: [C, H, W]
            conv1, conv2, fc1, fc2 = self.layers
            x = self.pool(jax.nn.relu(conv1(x)))
            x = self.pool(jax.nn.relu(conv2(x)))
            return fc2(jax.nn.relu(fc1(jnp.ravel(x))))

    return {"GPT2": GPT2, "Llama": Llama, "CNN": CNN}


def make_model(name: str, key=None, **overrides):
    """Build the real (concrete) Equinox model for ``name``; ``overrides`` change constructor kwargs."""
    import jax

    cls_name, kwargs = _SPECS[name]
    key = jax.random.PRNGKey(0) if key is None else key
    return _classes()[cls_name](**{**kwargs, **overrides}, key=key)


def _standard_config(name: str) -> dict:
    cls_name, kw = _SPECS[name]
    fam = _family(name)
    if fam == "gpt2":
        return dict(
            vocab_size=kw["vocab_size"], d_model=kw["d_model"], num_layers=kw["num_layers"],
            num_heads=kw["num_heads"], num_kv_heads=kw["num_heads"],
            head_dim=kw["d_model"] // kw["num_heads"], mlp_dim=kw["mlp_dim"], tied_embeddings=False,
        )
    if fam == "llama":
        return dict(
            vocab_size=kw["vocab_size"], d_model=kw["d_model"], num_layers=kw["num_layers"],
            num_heads=kw["num_heads"], num_kv_heads=kw["num_kv_heads"], head_dim=kw["head_dim"],
            mlp_dim=kw["mlp_dim"], tied_embeddings=True,
        )
    return dict(
        vocab_size=None, d_model=None, num_layers=None, num_heads=None, num_kv_heads=None,
        head_dim=None, mlp_dim=None, tied_embeddings=None,
    )


def _native(name: str) -> dict:
    cls_name, kw = _SPECS[name]
    native = {"class": cls_name, **{k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()}}
    if _family(name) == "cnn":
        c1, c2 = kw["channels"]
        k, s = kw["kernel_size"], kw["image_size"]
        side = ((s - k + 1) // 2 - k + 1) // 2
        native.update(
            input_shape=[kw["in_channels"], s, s],
            convs=[[kw["in_channels"], c1, k], [c1, c2, k]],  # [in_channels, out_channels, kernel_size]
            linears=[[c2 * side * side, kw["hidden"]], [kw["hidden"], kw["num_classes"]]],  # [in, out]
            pool=[2, 2],
        )
    return native


def build(name: str):
    """Return ``(abstract_params, config_dict)`` for fixture ``name``.

    ``abstract_params`` is ``eqx.filter(model, eqx.is_inexact_array)`` evaluated
    abstractly: the model's own pytree with ``jax.ShapeDtypeStruct`` for every
    float array and ``None`` for everything else -- what goes to optax.
    """
    import equinox as eqx
    import jax

    cls = _classes()[_SPECS[name][0]]
    kwargs = _SPECS[name][1]

    def init(key):
        return eqx.filter(cls(**kwargs, key=key), eqx.is_inexact_array)

    params = eqx.filter_eval_shape(init, jax.random.PRNGKey(0))
    cfg = _standard_config(name)
    cfg.update(scanned=False, layer_axis=None, layout="torch", native=_native(name))
    return params, cfg


def record(name: str) -> dict:
    import equinox as eqx
    import jax

    params, cfg = build(name)
    cls_name, kwargs = _SPECS[name]
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
        "library_version": eqx.__version__,
        "recorded_with": f"python {platform.python_version()}, jax {jax.__version__}, {PIP_INSTALL}",
        "model": (
            f"{cls_name}({kw}, key=jax.random.PRNGKey(0))  # class defined in "
            "tests/third_party/record_equinox.py from Equinox's own layers only"
        ),
        "how": (
            "eqx.filter_eval_shape(lambda key: eqx.filter(Model(..., key=key), eqx.is_inexact_array), "
            "jax.random.PRNGKey(0))  # == eqx.filter(model, eqx.is_inexact_array), the tree handed to optax; "
            "paths from jax.tree_util.tree_flatten_with_path (None leaves dropped)"
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
