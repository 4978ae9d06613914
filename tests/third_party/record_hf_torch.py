"""Record HuggingFace ``transformers`` PyTorch parameter trees as JAX users load them.

See ``FORMAT.md`` beside this file for the JSON format.  Nothing is downloaded:
every model is built from a config written out below, on PyTorch's ``meta``
device (``with torch.device("meta"): ...``), so no weights are ever allocated
and even the 8B configs record in seconds.

The recorded tree is what a JAX user gets from a transformers checkpoint with
``safetensors.flax.load_file("model.safetensors")``: a FLAT dict keyed by
PyTorch's dotted parameter names (``"model.layers.0.self_attn.q_proj.weight"``)
holding arrays in PyTorch layout (``nn.Linear.weight`` is ``[out, in]``;
GPT-2's ``Conv1D.weight`` is ``[in, out]``).  The names are those of
``model.named_parameters()`` (default ``remove_duplicate=True``), which drops
the tied ``lm_head.weight`` when ``tie_word_embeddings=True`` just as
``save_pretrained``'s safetensors do.  Each leaf's ``path`` is therefore a
one-element list holding the dotted name (the dict's only ``DictKey``).
``transformers`` and ``torch`` are imported only inside functions, so this
module is importable without them.

Install (reusing an existing torch 2.x; no other torch is installed)::

    pip install "transformers==4.57.6"

Run: ``python tests/third_party/record_hf_torch.py`` (writes ``trees/hf_torch_*.json``).
"""

from __future__ import annotations

import json
import os
import platform

# The same JSON helpers and config fields as the Flax recorder beside this file.
from record_hf_flax import _jsonable, _key_to_json, config_fields

LIBRARY = "transformers-torch"
PIP_INSTALL = 'pip install "transformers==4.57.6"'

NAMES = (
    "hf_torch_llama2_7b",
    "hf_torch_llama3_8b",
    "hf_torch_qwen2_0_5b",
    "hf_torch_gemma_2b",
    "hf_torch_gpt2",
    "hf_torch_qwen3_next_4_layers",
)

# name -> (config class, config kwargs); the model is AutoModelForCausalLM.from_config(config)
_SPECS = {
    # meta-llama/Llama-2-7b-hf
    "hf_torch_llama2_7b": (
        "LlamaConfig",
        dict(
            vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=32, intermediate_size=11008, max_position_embeddings=4096,
            rms_norm_eps=1e-5, tie_word_embeddings=False, rope_theta=10000.0,
        ),
    ),
    # meta-llama/Meta-Llama-3-8B (GQA variant; rope_scaling omitted)
    "hf_torch_llama3_8b": (
        "LlamaConfig",
        dict(
            vocab_size=128256, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=8, intermediate_size=14336, max_position_embeddings=8192,
            rms_norm_eps=1e-5, tie_word_embeddings=False, rope_theta=500000.0,
            bos_token_id=128000, eos_token_id=128001,
        ),
    ),
    # Qwen/Qwen2-0.5B
    "hf_torch_qwen2_0_5b": (
        "Qwen2Config",
        dict(
            vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
            num_key_value_heads=2, intermediate_size=4864, max_position_embeddings=131072,
            max_window_layers=24, rms_norm_eps=1e-6, rope_theta=1000000.0, sliding_window=131072,
            use_sliding_window=False, tie_word_embeddings=True, hidden_act="silu",
            bos_token_id=151643, eos_token_id=151643,
        ),
    ),
    # google/gemma-2b
    "hf_torch_gemma_2b": (
        "GemmaConfig",
        dict(
            vocab_size=256000, hidden_size=2048, num_hidden_layers=18, num_attention_heads=8,
            num_key_value_heads=1, head_dim=256, intermediate_size=16384, max_position_embeddings=8192,
            rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="gelu",
            hidden_activation="gelu_pytorch_tanh",
        ),
    ),
    # Qwen/Qwen3-Next-80B-A3B-Instruct's widths, but 4 of its 48 layers (three
    # gated-DeltaNet layers, then full attention: full_attention_interval=4)
    # and 8 of its 512 experts: transformers keeps each expert as its own
    # nn.Linear modules, 73,728 leaves for the whole model.
    "hf_torch_qwen3_next_4_layers": (
        "Qwen3NextConfig",
        dict(
            vocab_size=151936, hidden_size=2048, num_hidden_layers=4, num_attention_heads=16,
            num_key_value_heads=2, head_dim=256, intermediate_size=5120, moe_intermediate_size=512,
            shared_expert_intermediate_size=512, num_experts=8, num_experts_per_tok=2,
            linear_num_key_heads=16, linear_num_value_heads=32, linear_key_head_dim=128,
            linear_value_head_dim=128, linear_conv_kernel_dim=4, full_attention_interval=4,
            decoder_sparse_step=1, partial_rotary_factor=0.25, rope_theta=10000000.0,
            rms_norm_eps=1e-6, tie_word_embeddings=False,
        ),
    ),
    # openai-community/gpt2 (124M)
    "hf_torch_gpt2": (
        "GPT2Config",
        dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None),
    ),
}

_NOTES = {
    "qwen3_next": (
        "Flat dict keyed by torch dotted names, torch layout (nn.Linear weight [out, in]); "
        "transformers/models/qwen3_next/modeling_qwen3_next.py. Layers whose (i + 1) % "
        "full_attention_interval == 0 are full attention (self_attn), the others a gated DeltaNet "
        "(linear_attn). self_attn: 'self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads "
        "* self.head_dim * 2, ...)', used as 'query_states, gate = torch.chunk(self.q_proj(hidden_states)"
        ".view(*input_shape, -1, self.head_dim * 2), 2, dim=-1)' then 'gate = gate.reshape(*input_shape, -1)' "
        "and 'attn_output = attn_output * torch.sigmoid(gate)': per head its query, then its output gate "
        "over the attention's output neurons. k_proj/v_proj [kv_heads*head_dim, hidden], o_proj "
        "[hidden, heads*head_dim], q_norm/k_norm weight [head_dim]. linear_attn: in_proj_qkvz [2*key_dim + "
        "2*value_dim, hidden] (key_dim = linear_num_key_heads * linear_key_head_dim, value_dim = "
        "linear_num_value_heads * linear_value_head_dim), in_proj_ba [2*linear_num_value_heads, hidden], "
        "conv1d (nn.Conv1d, groups=conv_dim, bias=False) weight [conv_dim, 1, k], conv_dim = 2*key_dim + "
        "value_dim, dt_bias and A_log [linear_num_value_heads], norm.weight [linear_value_head_dim], out_proj "
        "[hidden, value_dim]. mlp (Qwen3NextSparseMoeBlock): gate (router) weight [num_experts, hidden], "
        "experts.{e}.gate_proj/up_proj [moe_intermediate_size, hidden] and down_proj [hidden, "
        "moe_intermediate_size] (one nn.Linear each), shared_expert.* of shared_expert_intermediate_size, "
        "shared_expert_gate [1, hidden]. tie_word_embeddings=False: lm_head.weight [vocab, hidden]."
    ),
    "llama": (
        "Flat dict keyed by torch dotted names (as safetensors.flax.load_file returns it), torch layout. "
        "Layers are 'model.layers.{i}.' prefixes (one key per layer and tensor; no stacked/scanned axis). "
        "All projections are torch nn.Linear, weight [out, in]: "
        "'self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=config.attention_bias)', "
        "'self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, ...)' (v_proj likewise), "
        "'self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, ...)'. "
        "So q_proj.weight is [num_heads*head_dim, hidden] with heads contiguous along axis 0: "
        "'hidden_shape = (*input_shape, -1, self.head_dim)'; "
        "'query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)'; "
        "o_proj.weight is [hidden, num_heads*head_dim] (heads contiguous along axis 1). "
        "MLP: gate_proj/up_proj.weight [intermediate, hidden], down_proj.weight [hidden, intermediate]. "
        "attention_bias=False, mlp_bias=False -> no bias leaves. "
        "LlamaRMSNorm: 'self.weight = nn.Parameter(torch.ones(hidden_size))', applied as "
        "'return self.weight * hidden_states.to(input_dtype)'; leaves input_layernorm/post_attention_layernorm/model.norm .weight [hidden]. "
        "model.embed_tokens.weight is nn.Embedding [vocab, hidden]. tie_word_embeddings=False -> separate "
        "lm_head.weight [vocab, hidden] ('self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)')."
    ),
    "qwen2": (
        "Flat dict keyed by torch dotted names, torch layout; same names/layout as Llama "
        "(nn.Linear weight [out, in], heads contiguous along axis 0 of q/k/v via '.view(hidden_shape)') "
        "except the attention has q/k/v biases and o_proj has none: "
        "'self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=True)', "
        "'self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=True)', "
        "'self.v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=True)', "
        "'self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=False)'. "
        "So q_proj.weight [14*64=896, 896], q_proj.bias [896], k_proj/v_proj.weight [2*64=128, 896], .bias [128]. "
        "MLP gate/up [4864, 896], down [896, 4864] (bias=False). Qwen2RMSNorm weight [hidden] (torch.ones init). "
        "tie_word_embeddings=True: lm_head.weight is the same Parameter as model.embed_tokens.weight "
        "('_tied_weights_keys = [\"lm_head.weight\"]'), so named_parameters() (remove_duplicate=True) and "
        "save_pretrained's safetensors have no lm_head leaf; the head uses model.embed_tokens.weight [vocab, hidden]."
    ),
    "gemma": (
        "Flat dict keyed by torch dotted names, torch layout; Llama-like names. nn.Linear weight [out, in], "
        "no biases: q_proj.weight [num_heads*head_dim = 8*256 = 2048, 2048], k_proj/v_proj.weight [1*256, 2048], "
        "o_proj.weight [2048, 2048]; heads contiguous along axis 0 via "
        "'query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)'. "
        "MLP gate/up [16384, 2048], down [2048, 16384]. "
        "GemmaRMSNorm: 'self.weight = nn.Parameter(torch.zeros(dim))' applied as "
        "'output = output * (1.0 + self.weight.float())' (zero-centred scale, leaf name 'weight', shape [hidden]). "
        "The embedding output is scaled by 'normalizer = torch.tensor(self.config.hidden_size**0.5, ...)' (no param). "
        "tie_word_embeddings=True: lm_head.weight is the same Parameter as model.embed_tokens.weight "
        "('_tied_weights_keys = [\"lm_head.weight\"]'), so there is no lm_head leaf; "
        "model.embed_tokens.weight [256000, 2048] serves both."
    ),
    "gpt2": (
        "Flat dict keyed by torch dotted names ('transformer.h.{i}.attn.c_attn.weight', ...), torch layout. "
        "GPT-2 uses transformers.pytorch_utils.Conv1D, whose weight is [in, out] (transposed vs nn.Linear): "
        "'Basically works like a linear layer but the weights are transposed.'; "
        "'def __init__(self, nf, nx): ... self.weight = nn.Parameter(torch.empty(nx, nf)); self.bias = nn.Parameter(torch.zeros(nf))'; "
        "forward 'x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)'. "
        "So attn.c_attn.weight is [n_embd, 3*n_embd] = [768, 2304] ('self.c_attn = Conv1D(3 * self.embed_dim, self.embed_dim)') "
        "with fused q,k,v contiguous along axis 1: "
        "'query_states, key_states, value_states = self.c_attn(hidden_states).split(self.split_size, dim=2)' then "
        "'shape_q = (*query_states.shape[:-1], -1, self.head_dim)' (heads contiguous within each third). "
        "attn.c_proj.weight [768, 768] (in = heads*head_dim on axis 0), mlp.c_fc.weight [768, 3072] "
        "('self.c_fc = Conv1D(intermediate_size, embed_dim)'), mlp.c_proj.weight [3072, 768]; every Conv1D has a bias [out]. "
        "LayerNorms ln_1/ln_2/ln_f have weight and bias [768]. transformer.wte.weight [50257, 768], "
        "transformer.wpe.weight [1024, 768]. tie_word_embeddings=True: lm_head.weight "
        "('self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)') is the same Parameter as "
        "transformer.wte.weight ('_tied_weights_keys = [\"lm_head.weight\"]'), so there is no lm_head leaf. "
        "Names are those of a GPT2LMHeadModel save_pretrained checkpoint; the original hub file "
        "openai-community/gpt2 model.safetensors (converted from the GPT2Model-era .bin) is believed to use "
        "unprefixed names ('h.0.attn.c_attn.weight', 'wte.weight') and may also carry non-parameter attn.bias "
        "buffers (not checked here: nothing is downloaded)."
    ),
}


def _family(name: str) -> str:
    for fam in ("qwen3_next", "llama", "qwen2", "gemma", "gpt2"):
        if fam in name:
            return fam
    raise KeyError(name)


def _standard_config(name: str, cfg) -> dict:
    # GPT-2 is multi-head; Llama, Qwen2 and Gemma configs are Llama-like.
    return config_fields("gpt2" if _family(name) == "gpt2" else "llama", cfg)


def _make_model(name: str):
    import torch
    import transformers

    config_cls, kwargs = _SPECS[name]
    config = getattr(transformers, config_cls)(**kwargs)
    # meta device: parameters have shapes and dtypes but no storage.
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return model, config


def _torch_dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def build(name: str):
    """Return ``(abstract_params, config_dict)`` for fixture ``name``.

    ``abstract_params`` is a FLAT dict ``{dotted_name: jax.ShapeDtypeStruct}``
    with the keys, shapes (torch layout) and dtypes that
    ``safetensors.flax.load_file`` gives for a ``save_pretrained`` checkpoint.
    """
    params, cfg, _ = _build(name)
    return params, cfg


def _build(name: str):
    import jax
    import jax.numpy as jnp

    model, config = _make_model(name)
    params = {
        n: jax.ShapeDtypeStruct(tuple(int(s) for s in p.shape), jnp.dtype(_torch_dtype_name(p.dtype)))
        for n, p in model.named_parameters()
    }
    cfg = _standard_config(name, config)
    cfg.update(scanned=False, layer_axis=None, layout="torch", native=_jsonable(config.to_dict()))
    return params, cfg, type(model).__name__


def record(name: str) -> dict:
    import jax
    import torch
    import transformers

    params, cfg, model_cls = _build(name)
    config_cls, kwargs = _SPECS[name]
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
            f"python {platform.python_version()}, torch {torch.__version__}, jax {jax.__version__}, "
            f"{PIP_INSTALL}"
        ),
        "model": (
            f"transformers.AutoModelForCausalLM.from_config(transformers.{config_cls}({kw}))"
            f"  # -> transformers.{model_cls}"
        ),
        "how": (
            'with torch.device("meta"): model = transformers.AutoModelForCausalLM.from_config(config); '
            "params = {n: jax.ShapeDtypeStruct(tuple(p.shape), str(p.dtype).removeprefix(\"torch.\")) "
            "for n, p in model.named_parameters()}  "
            "# remove_duplicate=True drops a tied lm_head.weight; == keys/shapes/dtypes of "
            "safetensors.flax.load_file on a save_pretrained checkpoint"
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
