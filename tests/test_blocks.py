"""The partition: which block every leaf gets, from its path and shape.

Expected v shapes are written out by hand from REFERENCE.md's Flax-layout
table, never computed with the code under test.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_mini
from optax_mini import BlockRules, BlockSpec

S = jax.ShapeDtypeStruct
F32 = jnp.float32


def v_shapes(params, **kwargs):
  """The nu shapes a real init produces (what the optimizer will keep)."""
  state = optax_mini.scale_by_adam_mini(**kwargs).init(params)
  return jax.tree.map(lambda x: tuple(x.shape), state.nu)


def leaf(*shape):
  return jnp.zeros(shape, F32)


# ---------------------------------------------------------------------------
# Naming conventions


def test_hf_nnx_names_gqa():
  dim, heads, kv_heads, head_dim, ffn, vocab = 32, 4, 2, 8, 48, 61
  layer = {
      "self_attn": {
          "q_proj": {"kernel": leaf(dim, heads * head_dim), "bias": leaf(heads * head_dim)},
          "k_proj": {"kernel": leaf(dim, kv_heads * head_dim)},
          "v_proj": {"kernel": leaf(dim, kv_heads * head_dim)},
          "o_proj": {"kernel": leaf(heads * head_dim, dim)},
      },
      "mlp": {
          "gate_proj": {"kernel": leaf(dim, ffn)},
          "up_proj": {"kernel": leaf(dim, ffn)},
          "down_proj": {"kernel": leaf(ffn, dim)},
      },
      "input_layernorm": {"scale": leaf(dim)},
  }
  params = {
      "model": {"embed_tokens": {"embedding": leaf(vocab, dim)}, "layers": {0: layer}, "norm": {"scale": leaf(dim)}},
      "lm_head": {"kernel": leaf(dim, vocab)},
  }
  got = v_shapes(params, head_dim=head_dim)
  lay = got["model"]["layers"][0]
  assert lay["self_attn"]["q_proj"]["kernel"] == (heads,)
  assert lay["self_attn"]["q_proj"]["bias"] == (heads * head_dim,)  # plain Adam
  assert lay["self_attn"]["k_proj"]["kernel"] == (kv_heads,)  # GQA exact
  assert lay["self_attn"]["v_proj"]["kernel"] == (kv_heads * head_dim,)
  assert lay["self_attn"]["o_proj"]["kernel"] == (dim,)
  assert lay["mlp"]["gate_proj"]["kernel"] == (ffn,)
  assert lay["mlp"]["down_proj"]["kernel"] == (dim,)
  assert lay["input_layernorm"]["scale"] == ()
  assert got["model"]["embed_tokens"]["embedding"] == (vocab,)
  assert got["model"]["norm"]["scale"] == ()
  assert got["lm_head"]["kernel"] == (vocab,)


def test_meta_easylm_names():
  params = {
      "tok_embeddings": {"embedding": leaf(100, 16)},
      "layers": [
          {
              "attention": {
                  "wq": {"kernel": leaf(16, 16)},
                  "wk": {"kernel": leaf(16, 8)},
                  "wv": {"kernel": leaf(16, 8)},
                  "wo": {"kernel": leaf(16, 16)},
              },
              "feed_forward": {"w1": {"kernel": leaf(16, 40)}, "w2": {"kernel": leaf(40, 16)}, "w3": {"kernel": leaf(16, 40)}},
              "attention_norm": {"kernel": leaf(16)},
          }
      ],
      "output": {"kernel": leaf(16, 100)},
  }
  got = v_shapes(params, head_dim=4)
  att = got["layers"][0]["attention"]
  assert (att["wq"]["kernel"], att["wk"]["kernel"], att["wv"]["kernel"], att["wo"]["kernel"]) == ((4,), (2,), (8,), (16,))
  assert got["layers"][0]["feed_forward"]["w1"]["kernel"] == (40,)
  assert got["layers"][0]["feed_forward"]["w2"]["kernel"] == (16,)
  assert got["layers"][0]["attention_norm"]["kernel"] == ()  # a 1-D "kernel" is one block
  assert got["tok_embeddings"]["embedding"] == (100,)
  assert got["output"]["kernel"] == (100,)


def test_maxtext_dense_general_names_need_no_head_dim():
  embed, heads, kv_heads, head_dim, mlp, vocab = 16, 4, 2, 8, 24, 50
  params = {
      "token_embedder": {"embedding": leaf(vocab, embed)},
      "decoder": {
          "layers_0": {
              "self_attention": {
                  "query": {"kernel": leaf(embed, heads, head_dim)},
                  "key": {"kernel": leaf(embed, kv_heads, head_dim)},
                  "value": {"kernel": leaf(embed, kv_heads, head_dim)},
                  "out": {"kernel": leaf(heads, head_dim, embed)},
              },
              "mlp": {"wi_0": {"kernel": leaf(embed, mlp)}, "wi_1": {"kernel": leaf(embed, mlp)}, "wo": {"kernel": leaf(mlp, embed)}},
          },
          "decoder_norm": {"scale": leaf(embed)},
          "logits_dense": {"kernel": leaf(embed, vocab)},
      },
  }
  got = v_shapes(params)
  att = got["decoder"]["layers_0"]["self_attention"]
  assert att["query"]["kernel"] == (heads,)
  assert att["key"]["kernel"] == (kv_heads,)
  assert att["value"]["kernel"] == (kv_heads, head_dim)  # one per output neuron
  assert att["out"]["kernel"] == (embed,)
  assert got["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel"] == (mlp,)
  assert got["decoder"]["decoder_norm"]["scale"] == ()
  assert got["decoder"]["logits_dense"]["kernel"] == (vocab,)
  assert got["token_embedder"]["embedding"] == (vocab,)


def test_gemma_heads_first_layouts():
  n, k, d, h = 4, 2, 16, 8
  params = {"attn": {"q_einsum": {"w": leaf(n, d, h)}, "kv_einsum": {"w": leaf(2, k, d, h)}, "attn_vec_einsum": {"w": leaf(n, h, d)}}}
  got = v_shapes(params)["attn"]
  assert got["q_einsum"]["w"] == (n,)
  # k: one v per kv head; v: one per output neuron [k, h]. v is stored
  # [2, k, h], the k part's head value repeated over h.
  assert got["kv_einsum"]["w"] == (2, k, h)
  layout = optax_mini.block_specs(params)["attn"]["kv_einsum"]["w"].layout((2, k, d, h))
  assert layout.num_blocks == k + k * h
  assert got["attn_vec_einsum"]["w"] == (d,)


def test_gpt2_fused_qkv_gets_each_parts_blocks():
  # HF Flax GPT-2: FlaxConv1D kernels are [out, in]; c_attn's output is q|k|v.
  params = {"h": {"0": {"attn": {"c_attn": {"kernel": leaf(48, 16), "bias": leaf(48)}, "c_proj": {"kernel": leaf(16, 16)}}}}}
  specs = optax_mini.block_specs(params, head_dim=4)["h"]["0"]["attn"]
  layout = specs["c_attn"]["kernel"].layout((48, 16))
  assert layout.v_shape == (48,)
  assert layout.num_blocks == 4 + 4 + 16  # q, k: one per head; v: one per neuron
  assert [p.name for p in specs["c_attn"]["kernel"].parts] == ["q", "k", "v"]
  assert specs["c_attn"]["bias"].v_shape((48,)) == (48,)
  assert specs["c_proj"]["kernel"].reduce_axes == (1,)  # [out, in]: keep out


def test_swin_attention_qkv_gets_each_parts_blocks():
  # keras-hub's Swin: attention_qkv Dense [in, 3 * in], reshaped to
  # (3, heads, head_dim) ("ops.reshape(qkv, (B_, N, 3, self.num_heads, -1))").
  params = {"stage_0": {"blocks_0": {"attn": {"attention_qkv": {"kernel": leaf(24, 72), "bias": leaf(72)}}}}}
  spec = optax_mini.block_specs(params, head_dim=8)["stage_0"]["blocks_0"]["attn"]["attention_qkv"]
  assert [p.name for p in spec["kernel"].parts] == ["q", "k", "v"]
  assert spec["kernel"].layout((24, 72)).num_blocks == 3 + 3 + 24  # q, k per head; v per neuron
  assert spec["bias"].v_shape((72,)) == (72,)


def test_wqkv_is_read_as_its_library_stores_it_or_raises():
  # InternLM2's attention/wqkv repeats (q.., k, v) per key/value head; MPT's
  # attn/Wqkv and Phi's mixer/Wqkv are [q | k | v] runs; anywhere else the
  # name could be either, and the two give different blocks.
  rules = BlockRules(num_heads=4, num_kv_heads=4)
  intern = {"layers": {"0": {"attention": {"wqkv": {"kernel": leaf(32, 96)}}}}}
  spec = optax_mini.block_specs(intern, head_dim=8, blocks=rules)["layers"]["0"]["attention"]["wqkv"]["kernel"]
  assert [(p.name, p.size) for p in spec.parts] == [("q", 8), ("k", 8), ("v", 8)]  # repeated per head
  mpt = {"blocks": {"0": {"attn": {"Wqkv": {"kernel": leaf(32, 96)}}}}}
  spec = optax_mini.block_specs(mpt, head_dim=8, blocks=rules)["blocks"]["0"]["attn"]["Wqkv"]["kernel"]
  assert [(p.name, p.size) for p in spec.parts] == [("q", 32), ("k", 32), ("v", 32)]
  other = {"layer": {"wqkv": {"kernel": leaf(32, 96)}}}
  with pytest.raises(ValueError, match=r"'i \(p n h\)' or 'i \(n p h\)'"):
    optax_mini.block_specs(other, head_dim=8, blocks=rules)
  # InternLM2's PyTorch checkpoint: the transpose, [(kv (groups + 2) head_dim), in].
  torch = {"model": {"layers": {"0": {"attention": {"wqkv": {"weight": leaf((2 * 4 + 4) * 8, 32)}}}}}}
  report = optax_mini.explain(torch, head_dim=8, blocks=BlockRules(weight_layout="torch", num_heads=8, num_kv_heads=2))
  assert report.num_v == 8 + 2 + 2 * 8


def test_codegen_qkv_proj_is_four_groups_of_query_value_key():
  """CodeGen's PyTorch qkv_proj [3 * d, d] holds four groups of q | v | k
  (modeling_codegen: "qkv.reshape(..., mp_num, -1)" with mp_num = 4, then
  query, value, key split from each). It raised, asking for head counts that
  read it as [q | k | v] runs (values averaged as heads, the last group's
  heads per neuron). v against float64 NumPy, with head_dim alone and with
  the head counts too."""
  d, heads, hd = 64, 8, 8  # two heads in each group
  g = np.random.default_rng(0).standard_normal((3 * d, d)).astype(np.float32)
  attn = lambda qkv: {"transformer": {"h": {"0": {"attn": {  # noqa: E731
      "qkv_proj": {"weight": qkv}, "out_proj": {"weight": jnp.zeros((d, d))}}}}}}
  sq = (g.astype(np.float64) ** 2).reshape(4, 3, d // 4, d).mean(axis=-1)  # [group, part, row]
  want = sq.copy()
  for part in (0, 2):  # query, key: one v per head
    want[:, part] = np.repeat(sq[:, part].reshape(4, -1, hd).mean(-1), hd, axis=-1)
  for blocks in (BlockRules(weight_layout="torch"),
                 BlockRules(weight_layout="torch", num_heads=heads, num_kv_heads=heads)):
    tx = optax_mini.scale_by_adam_mini(b2=0.0, head_dim=hd, blocks=blocks)
    _, state = tx.update(attn(jnp.asarray(g)), tx.init(attn(jnp.zeros((3 * d, d)))))
    nu = state.nu["transformer"]["h"]["0"]["attn"]["qkv_proj"]["weight"]
    np.testing.assert_allclose(np.asarray(nu), want.reshape(-1), rtol=1e-5)
  report = optax_mini.explain(attn(leaf(3 * d, d)), head_dim=hd, blocks=TORCH)
  assert report.num_v == 4 * (2 + 2 + d // 4) + d


def test_gpt_neox_query_key_value_kernel_raises_but_its_checkpoint_does_not():
  # EasyDeL's GPT-NeoX splits attention/query_key_value/kernel into
  # [q | k | v] runs, HF's interleaves (q, k, v) per head: for a Flax kernel
  # there both fit any head counts (the error says so, and does not send the
  # user to them). HF's PyTorch checkpoint (a weight) is HF's layout.
  kernel = {"gpt_neox": {"layers": {"0": {"attention": {"query_key_value": {"kernel": leaf(32, 96)}}}}}}
  with pytest.raises(ValueError, match=r"'i \(p n h\)' or 'i \(n p h\)'") as err:
    optax_mini.block_specs(kernel, head_dim=8)
  assert "num_heads" not in str(err.value)
  weight = {"gpt_neox": {"layers": {"0": {"attention": {"query_key_value": {"weight": leaf(96, 32)}}}}}}
  spec = optax_mini.block_specs(weight, head_dim=8, blocks=BlockRules(weight_layout="torch"))
  parts = spec["gpt_neox"]["layers"]["0"]["attention"]["query_key_value"]["weight"].parts
  assert [(p.name, p.size) for p in parts] == [("q", 8), ("k", 8), ("v", 8)]  # per head


def _bloom_or_falcon(signature):
  d = 32
  layer = {"self_attention": {"query_key_value": {"kernel": leaf(d, 3 * d), "bias": leaf(3 * d)},
                              "dense": {"kernel": leaf(d, d)}}}
  tree = {"transformer": {"word_embeddings": {"embedding": leaf(100, d)}, "h": {"0": layer},
                          "ln_f": {"scale": leaf(d)}}}
  if signature:
    tree["transformer"]["word_embeddings_layernorm"] = {"scale": leaf(d), "bias": leaf(d)}
  return tree


def test_bloom_is_told_from_easydel_falcon_by_its_word_embeddings_layernorm():
  # The same path and shape: HF Flax BLOOM interleaves (q, k, v) per head,
  # EasyDeL's Falcon keeps [q | k | v] runs (Rule.beside: only BLOOM has
  # a word_embeddings_layernorm). 4 heads of 8.
  qkv = ("transformer", "h", "0", "self_attention", "query_key_value", "kernel")

  def parts(tree, **kwargs):
    spec = optax_mini.block_specs(tree, head_dim=8, **kwargs)
    for key in qkv:
      spec = spec[key]
    return [(p.name, p.size) for p in spec.parts], spec.role

  assert parts(_bloom_or_falcon(True)) == (
      [("q", 8), ("k", 8), ("v", 8)],
      "fused q|k|v [query_key_value/kernel, beside word_embeddings_layernorm]",
  )
  with pytest.raises(ValueError, match=r"query_key_value.*could be 'i \(p n h\)' or 'i \(n p h\)'"):
    optax_mini.block_specs(_bloom_or_falcon(False), head_dim=8)
  runs = BlockRules(rules=[optax_mini.Rule("query_key_value/kernel", "q,k,v", "i (p n h)", where="pnh == 3*i")])
  assert parts(_bloom_or_falcon(False), blocks=runs)[0] == [("q", 32), ("k", 32), ("v", 32)]
  # One leaf alone has no tree to find the signature in: it raises too.
  with pytest.raises(ValueError, match="could be"):
    optax_mini.block_spec_for(qkv, leaf(32, 96), head_dim=8)


def test_a_user_rule_beside_a_signature():
  tree = {"net": {"proj": {"kernel": leaf(16, 48)}}, "marker": {"scale": leaf(16)}}
  rule = optax_mini.Rule("proj/kernel", "q,k,v", "i (n p h)", where="nph == 3*i", beside="marker")
  spec = optax_mini.block_specs(tree, head_dim=8, blocks=BlockRules(rules=[rule]))["net"]["proj"]["kernel"]
  assert [(p.name, p.size) for p in spec.parts] == [("q", 8), ("k", 8), ("v", 8)]
  # Without the signature the rule applies to nothing, and init says so.
  del tree["marker"]
  tx = optax_mini.adam_mini(1e-3, head_dim=8, blocks=BlockRules(rules=[rule]))
  with pytest.warns(UserWarning, match=r"beside pattern 'marker' matched no parameter"):
    tx.init(tree)
  assert optax_mini.block_specs(tree, blocks=BlockRules(rules=[rule]))["net"]["proj"]["kernel"].v_shape((16, 48)) == (48,)
  with pytest.raises(ValueError, match="beside must be a non-empty path pattern"):
    BlockRules(rules=[optax_mini.Rule("proj", "neuron", beside="")])


def test_gpt2_names_on_an_in_out_kernel_raise_instead_of_guessing():
  # A Dense port ([in, out]) under GPT-2's names fails the [out, in] check.
  params = {"h": {"0": {"attn": {"c_attn": {"kernel": leaf(16, 48)}}}}}
  with pytest.raises(ValueError, match=r"c_attn.*\(16, 48\).*\(p n h\) i"):
    optax_mini.block_specs(params, head_dim=4)


def test_heads_times_head_dim_different_from_dim():
  # Qwen3/Gemma style: 4 heads of 16 on a 24-wide model. The official code's
  # dim*dim//n_heads chunks would cut across heads here.
  params = {"q_proj": {"kernel": leaf(24, 64)}, "k_proj": {"kernel": leaf(24, 32)}, "o_proj": {"kernel": leaf(64, 24)}}
  got = v_shapes(params, head_dim=16)
  assert got == {"q_proj": {"kernel": (4,)}, "k_proj": {"kernel": (2,)}, "o_proj": {"kernel": (24,)}}


def test_heads_are_column_blocks_in_flax_layout():
  # Head 1 of a flat [in, heads*head_dim] kernel is columns 4..7, not rows.
  g = np.zeros((6, 12), np.float32)
  g[:, 4:8] = 2.0
  tx = optax_mini.scale_by_adam_mini(b1=0.0, b2=0.0, head_dim=4)
  params = {"q_proj": {"kernel": jnp.zeros((6, 12))}}
  state = tx.init(params)
  _, state = tx.update({"q_proj": {"kernel": jnp.asarray(g)}}, state)
  np.testing.assert_allclose(state.nu["q_proj"]["kernel"], [0.0, 4.0, 0.0])


def test_low_rank_leaves_under_kernel_modules_fall_through():
  # Upstream IndexError: a 1-D leaf whose name contains a per-row keyword.
  params = {
      "embeddings": {"LayerNorm": {"scale": leaf(16), "bias": leaf(16)}, "word_embeddings": {"embedding": leaf(30, 16)}},
      "mlp": {"norm": {"scale": leaf(16)}, "fc1": {"kernel": leaf(16, 32)}},
      "scalar_gate": leaf(),
  }
  got = v_shapes(params)
  assert got["embeddings"]["LayerNorm"] == {"scale": (), "bias": (16,)}
  assert got["embeddings"]["word_embeddings"]["embedding"] == (30,)
  assert got["mlp"]["norm"]["scale"] == ()
  assert got["mlp"]["fc1"]["kernel"] == (32,)
  assert got["scalar_gate"] == ()


def test_unknown_kernels_get_one_block_per_output_feature():
  params = {"conv": {"kernel": leaf(3, 3, 8, 16)}, "w": leaf(5, 7)}
  assert v_shapes(params) == {"conv": {"kernel": (16,)}, "w": (7,)}


# ---------------------------------------------------------------------------
# Path normalisation


def test_whole_components_not_substrings():
  params = {
      "value_head": {"kernel": leaf(8, 3)},  # not a value projection
      "query_norm": {"scale": leaf(8)},  # not a query kernel
      "keyboard": {"kernel": leaf(8, 6)},  # no head_dim needed: not "key"
  }
  got = v_shapes(params)
  assert got == {"value_head": {"kernel": (3,)}, "query_norm": {"scale": ()}, "keyboard": {"kernel": (6,)}}
  labels = {r.path: r.role for r in optax_mini.explain(params).rows}
  assert labels["['value_head']['kernel']"] == "neuron (default)"


def test_matching_is_case_insensitive():
  assert v_shapes({"Q_Proj": {"Kernel": leaf(8, 8)}}, head_dim=2) == {"Q_Proj": {"Kernel": (4,)}}


def test_path_key_types_normalise_alike():
  @dataclasses.dataclass
  class Attn:
    q_proj: jax.Array
    norm: jax.Array

  jax.tree_util.register_dataclass(Attn, data_fields=["q_proj", "norm"], meta_fields=[])

  class Opaque:  # flattened without keys -> FlattenedIndexKey

    def __init__(self, children):
      self.children = children

  jax.tree_util.register_pytree_node(Opaque, lambda o: (o.children, None), lambda _, c: Opaque(list(c)))

  params = {
      "by_int": {0: {"q_proj": leaf(8, 8)}},  # DictKey(int)
      "by_attr": Attn(q_proj=leaf(8, 8), norm=leaf(8)),  # GetAttrKey
      "by_seq": [{"q_proj": leaf(8, 8)}],  # SequenceKey
      "opaque": Opaque([leaf(8, 8)]),
  }
  got = v_shapes(params, head_dim=4)
  assert got["by_int"][0]["q_proj"] == (2,)
  assert got["by_attr"].q_proj == (2,)
  assert got["by_attr"].norm == ()
  assert got["by_seq"][0]["q_proj"] == (2,)
  assert got["opaque"].children[0] == (8,)  # no name: a default kernel


def test_trailing_value_attribute_is_dropped():
  path = (jax.tree_util.DictKey("layers"), jax.tree_util.DictKey(0), jax.tree_util.DictKey("v_proj"),
          jax.tree_util.DictKey("kernel"), jax.tree_util.GetAttrKey("value"))
  assert optax_mini.normalize_path(path) == ("layers", "0", "v_proj", "kernel")
  # Every nnx.State path ends in .value: it must not make everything a value.
  spec = optax_mini.block_spec_for(path[:3] + (jax.tree_util.DictKey("scale"), path[-1]), leaf(8))
  assert spec.v_shape((8,)) == ()


# ---------------------------------------------------------------------------
# Overrides


def test_value_as_one_block():
  params = {"attn": {"v_proj": {"kernel": leaf(16, 8)}, "o_proj": {"kernel": leaf(8, 16)}}}
  got = v_shapes(params, blocks=BlockRules(value_as_one_block=True))
  assert got == {"attn": {"v_proj": {"kernel": ()}, "o_proj": {"kernel": (16,)}}}


@pytest.mark.filterwarnings("ignore:BlockRules. rule:UserWarning")  # attn/* is shadowed on purpose
def test_user_rules_come_first_and_first_match_wins():
  params = {"attn": {"q_proj": {"kernel": leaf(16, 8)}}, "mlp": {"fc1": {"kernel": leaf(16, 8)}}}
  rules = BlockRules(rules=[("attn/q_proj", "tensor"), ("attn/*", "element"), ("fc1", BlockSpec(reduce_axes=(1,)))])
  got = v_shapes(params, blocks=rules)
  assert got == {"attn": {"q_proj": {"kernel": ()}}, "mlp": {"fc1": {"kernel": (16,)}}}
  # A plain list of rules works too.
  assert v_shapes(params, blocks=[("q_proj", "neuron")]) == {"attn": {"q_proj": {"kernel": (8,)}}, "mlp": {"fc1": {"kernel": (8,)}}}


def test_pytree_of_specs():
  params = {"a": leaf(4, 6), "b": leaf(3)}
  specs = {"a": BlockSpec(reduce_axes=(1,)), "b": BlockSpec()}
  assert v_shapes(params, blocks=specs) == {"a": (4,), "b": (3,)}


def test_stacked_layers_nnx_scan_axis0():
  layers, dim, heads, head_dim = 3, 16, 4, 4
  params = {
      "layers": {
          "attn": {"q_proj": {"kernel": leaf(layers, dim, heads * head_dim)}, "v_proj": {"kernel": leaf(layers, dim, 8)}},
          "norm": {"scale": leaf(layers, dim)},
      },
      "embed_tokens": {"embedding": leaf(40, dim)},
  }
  got = v_shapes(params, head_dim=head_dim, blocks=BlockRules(stacked={"layers": 0}))
  assert got["layers"]["attn"]["q_proj"]["kernel"] == (layers, heads)
  assert got["layers"]["attn"]["v_proj"]["kernel"] == (layers, 8)
  assert got["layers"]["norm"]["scale"] == (layers,)  # one per layer, never across
  assert got["embed_tokens"]["embedding"] == (40,)
  one = v_shapes(params, blocks=BlockRules(stacked={"layers": 0}, value_as_one_block=True), head_dim=head_dim)
  assert one["layers"]["attn"]["v_proj"]["kernel"] == (layers,)


def test_stacked_layers_maxtext_axis1():
  embed, layers, heads, head_dim = 16, 3, 4, 8
  params = {"decoder": {"layers": {
      "self_attention": {"query": {"kernel": leaf(embed, layers, heads, head_dim)}, "out": {"kernel": leaf(heads, layers, head_dim, embed)}},
      "mlp": {"wi_0": {"kernel": leaf(embed, layers, 32)}},
      "pre_self_attention_norm": {"scale": leaf(embed, layers)},
  }}}
  got = v_shapes(params, blocks=BlockRules(stacked={"decoder/layers": 1}))["decoder"]["layers"]
  assert got["self_attention"]["query"]["kernel"] == (layers, heads)
  assert got["self_attention"]["out"]["kernel"] == (layers, embed)
  assert got["mlp"]["wi_0"]["kernel"] == (layers, 32)
  assert got["pre_self_attention_norm"]["scale"] == (layers,)


def test_stacked_mixture_of_experts_maxtext():
  # MaxText's MoeBlock params [experts, layers, in, out] (its layer axis is 1
  # on every scanned leaf) and the router [in, layers, experts]: each
  # expert's neurons per layer.
  embed, layers, experts, mlp = 16, 3, 4, 32
  params = {"decoder": {"layers": {"MoeBlock_0": {
      "wi_0": leaf(experts, layers, embed, mlp),
      "wo": leaf(experts, layers, mlp, embed),
      "gate": {"kernel": leaf(embed, layers, experts)},
  }}}}
  got = v_shapes(params, blocks=BlockRules(stacked={"decoder/layers": 1}))["decoder"]["layers"]["MoeBlock_0"]
  assert got["wi_0"] == (experts, layers, mlp)
  assert got["wo"] == (experts, layers, embed)
  assert got["gate"]["kernel"] == (layers, experts)


@pytest.mark.parametrize("module", ["GptOssMlp", "routed_experts"])
def test_experts_wo_keeps_its_experts_under_any_module_name(module):
  # MaxText's RoutedMoE under names without "moe": GPT-OSS's GptOssMlp,
  # Qwen3-Next's and Qwen3.5's mlp/routed_experts. Their wo [experts, mlp,
  # emb] was read as an attention output [in, in, out], averaging the experts.
  embed, layers, experts, mlp = 16, 3, 4, 32
  params = {"decoder": {"layers": {"mlp": {module: {
      "wi_0": leaf(experts, layers, embed, mlp),
      "wo": leaf(experts, layers, mlp, embed),
  }}}}}
  got = v_shapes(params, blocks=BlockRules(stacked={"decoder/layers": 1}))["decoder"]["layers"]["mlp"][module]
  assert got == {"wi_0": (experts, layers, mlp), "wo": (experts, layers, embed)}


def test_mamba_a_log_is_per_channel():
  # Mamba's A_log [d_inner, d_state] holds each channel's decay rates
  # (A = -exp(A_log)); Mamba-2's [heads] is one tensor.
  params = {"mixer": {"A_log": leaf(96, 8)}, "mamba2": {"A_log": leaf(6)}}
  got = v_shapes(params)
  assert got == {"mixer": {"A_log": (96,)}, "mamba2": {"A_log": ()}}


def test_jax_llm_examples_layers():
  # jax-ml/jax-llm-examples keeps its weights in pytree dataclasses
  # (attribute paths, ".layers[0].attn.q"): attn.q [d, heads, head_dim]
  # ("btd,dhq->bhtq"), attn.k/v [d, kv_heads, head_dim], attn.o [heads,
  # head_dim, d]; the mixture's w_router [d, experts], we_gate/we_up
  # [experts, d, ffn] and we_down [experts, ffn, d] (jax.lax.ragged_dot per
  # expert). Counts from that config: 4 heads, 2 kv heads of 16, 3 experts.
  import dataclasses as dc

  @jax.tree_util.register_dataclass
  @dc.dataclass
  class Attn:
    q: jax.Array
    k: jax.Array
    v: jax.Array
    o: jax.Array

  @jax.tree_util.register_dataclass
  @dc.dataclass
  class MoE:
    w_router: jax.Array
    we_gate: jax.Array
    we_up: jax.Array
    we_down: jax.Array

  @jax.tree_util.register_dataclass
  @dc.dataclass
  class Layer:
    attn: Attn
    ffw: MoE

  d, heads, kv, hd, experts, ffn = 64, 4, 2, 16, 3, 48
  layer = Layer(Attn(leaf(d, heads, hd), leaf(d, kv, hd), leaf(d, kv, hd), leaf(heads, hd, d)),
                MoE(leaf(d, experts), leaf(experts, d, ffn), leaf(experts, d, ffn), leaf(experts, ffn, d)))
  got = v_shapes({"layers": [layer]})["layers"][0]
  assert dc.asdict(got) == {
      "attn": {"q": (heads,), "k": (kv,), "v": (kv, hd), "o": (d,)},
      "ffw": {"w_router": (experts,), "we_gate": (experts, ffn), "we_up": (experts, ffn),
              "we_down": (experts, d)},
  }
  # Heads-first under those names is not theirs: it raises.
  with pytest.raises(ValueError, match=r"attn.*q.*fits none"):
    optax_mini.block_specs({"attn": {"q": leaf(heads, d, hd)}})


def test_lora_factors_get_one_v_per_output():
  # qwix (tunix) puts <weight>_lora_a/_lora_b beside the weight it adapts:
  # A [in..., rank] one v per rank direction, B [rank, out...] one per output
  # of the adapted layer (the query's [heads, head_dim] outputs: per neuron).
  rank, dim, heads, head_dim = 4, 16, 2, 8
  params = {"attn": {
      "q_proj": {"w_lora_a": leaf(dim, rank), "w_lora_b": leaf(rank, heads, head_dim)},
      "o_proj": {"w_lora_a": leaf(heads, head_dim, rank), "w_lora_b": leaf(rank, dim)},
  }}
  got = v_shapes(params, blocks=BlockRules(num_heads=heads))["attn"]
  assert got["q_proj"] == {"w_lora_a": (rank,), "w_lora_b": (heads, head_dim)}
  assert got["o_proj"] == {"w_lora_a": (rank,), "w_lora_b": (dim,)}
  # PEFT's adapters in a PyTorch checkpoint: lora_A [rank, in], lora_B [out, rank].
  peft = {"model.layers.0.self_attn.q_proj.lora_A.default.weight": leaf(rank, dim),
          "model.layers.0.self_attn.q_proj.lora_B.default.weight": leaf(heads * head_dim, rank)}
  got = v_shapes(peft, head_dim=head_dim, blocks=BlockRules(weight_layout="torch"))
  assert list(got.values()) == [(rank,), (heads * head_dim,)]
  # PEFT's embedding adapters, lora_embedding_A [rank, vocab] (a table read
  # through its transpose: one v per token, as the table it adapts; it was
  # one per rank direction, every token averaged) and lora_embedding_B
  # [dim, rank] (one per output).
  vocab = 50
  peft = {"model.embed_tokens.lora_embedding_A.default": leaf(rank, vocab),
          "model.embed_tokens.lora_embedding_B.default": leaf(dim, rank)}
  got = v_shapes(peft, blocks=BlockRules(weight_layout="torch"))
  assert list(got.values()) == [(vocab,), (dim,)]


def test_blocks_survive_inject_hyperparams():
  params = {"attn": {"v_proj": {"kernel": jnp.ones((8, 4))}}}
  rules = BlockRules(value_as_one_block=True)
  tx = optax.inject_hyperparams(optax_mini.adam_mini)(learning_rate=1e-2, blocks=rules)
  state = tx.init(params)
  assert state.inner_state[0].nu["attn"]["v_proj"]["kernel"].shape == ()


def test_explain_table_and_totals():
  params = {
      "embed_tokens": {"embedding": S((100, 16), F32)},
      "q_proj": {"kernel": S((16, 16), F32), "bias": S((16,), F32)},
      "norm": {"scale": S((16,), F32)},
  }
  report = optax_mini.explain(params, head_dim=4, mu_dtype=jnp.bfloat16)
  text = str(report)
  for needle in ("path", "v shape", "['q_proj']['kernel']", "heads [q_proj]", "(0, 1/4)", "[4]", "decay", "parameters:", "1,888"):
    assert needle in text, needle
  assert report.num_params == 100 * 16 + 16 * 16 + 16 + 16
  assert report.num_v == 100 + 4 + 16 + 1
  decay = {r.path: r.decayed for r in report.rows}
  assert decay == {"['embed_tokens']['embedding']": True, "['norm']['scale']": False,
                   "['q_proj']['bias']": False, "['q_proj']['kernel']": True}
  n = report.num_params
  assert report.adamw_bytes == 8 * n + 4
  assert report.adam_mini_bytes == 4 * n + 4 * report.num_v + 4
  assert report.adam_mini_mu_dtype_bytes == 2 * n + 4 * report.num_v + 4


def test_value_as_one_block_in_a_fused_kernel():
  params = {"attn": {"c_attn": {"kernel": leaf(48, 16)}}}  # GPT-2 [out, in], 4 heads of 4
  spec = optax_mini.block_specs(params, head_dim=4, blocks=BlockRules(value_as_one_block=True))["attn"]["c_attn"]["kernel"]
  assert spec.layout((48, 16)).num_blocks == 4 + 4 + 1


def test_query_key_per_neuron_in_a_fused_kernel():
  params = {"attn": {"c_attn": {"kernel": leaf(48, 16)}}}  # GPT-2 [out, in], 4 heads of 4
  spec = optax_mini.block_specs(params, head_dim=4, blocks=BlockRules(query_key_per_neuron=True))["attn"]["c_attn"]["kernel"]
  assert spec.layout((48, 16)).num_blocks == 16 + 16 + 16  # q, k and v: one v per output neuron
  assert spec.reduce_axes == (1,)
  default = optax_mini.block_specs(params, head_dim=4)["attn"]["c_attn"]["kernel"]
  assert default.layout((48, 16)).num_blocks == 4 + 4 + 16


def test_keras_flat_variable_paths_read_as_their_components():
  # {variable.path: value}: a flat dict whose keys hold '/'-separated paths.
  nested = {"decoder_block_0": {"attention": {"query": {"kernel": leaf(4, 32, 8)}}},
            "token_embedding": {"embeddings": leaf(100, 32)}}
  flat = {"decoder_block_0/attention/query/kernel": leaf(4, 32, 8), "token_embedding/embeddings": leaf(100, 32)}
  got = v_shapes(flat, head_dim=8)
  assert got == {"decoder_block_0/attention/query/kernel": (4,), "token_embedding/embeddings": (100,)}
  want = v_shapes(nested, head_dim=8)
  assert got["decoder_block_0/attention/query/kernel"] == want["decoder_block_0"]["attention"]["query"]["kernel"]


def test_user_rule_with_a_layout_and_explicit_parts():
  # A fused [in, q | k | v] kernel of a GQA model: 4 query heads, 2 kv heads of 8.
  params = {"attn": {"wqkv": {"kernel": leaf(32, (4 + 2 + 2) * 8)}}}
  rules = BlockRules(rules=[("wqkv", "q,k,v", "i (p n h)")], num_heads=4, num_kv_heads=2)
  spec = optax_mini.block_specs(params, head_dim=8, blocks=rules)["attn"]["wqkv"]["kernel"]
  assert [(p.name, p.size, p.head_dim) for p in spec.parts] == [("q", 32, 8), ("k", 16, 8), ("v", 16, None)]
  assert spec.layout((32, 64)).num_blocks == 4 + 2 + 16
  # The same blocks written as a BlockSpec.
  explicit = BlockSpec(reduce_axes=(0,), part_axis=1, parts=(optax_mini.Part("q", 32, 8), optax_mini.Part("k", 16, 8), optax_mini.Part("v", 16)))
  assert explicit.layout((32, 64)) == spec.layout((32, 64))


def test_default_rules_are_well_formed():
  from optax_mini.blocks import _check_rule
  for rule in optax_mini.DEFAULT_RULES:
    _check_rule(rule)


# ---------------------------------------------------------------------------
# PyTorch layout: parameters named "weight" (checkpoints, Equinox)

TORCH = BlockRules(weight_layout="torch")


def _torch_llama_layer(dim, heads, kv_heads, head_dim, ffn):
  return {
      "self_attn": {
          "q_proj": {"weight": leaf(heads * head_dim, dim)},
          "k_proj": {"weight": leaf(kv_heads * head_dim, dim)},
          "v_proj": {"weight": leaf(kv_heads * head_dim, dim)},
          "o_proj": {"weight": leaf(dim, heads * head_dim)},
      },
      "mlp": {"gate_proj": {"weight": leaf(ffn, dim)}, "down_proj": {"weight": leaf(dim, ffn)}},
      "input_layernorm": {"weight": leaf(dim)},
  }


def test_pytorch_weights_are_read_transposed():
  # nn.Linear(in, out).weight is [out, in]; the official rules keep the out
  # axis (per neuron, per token of lm_head) or its heads.
  dim, heads, kv_heads, head_dim, ffn, vocab = 32, 4, 2, 8, 48, 61
  params = {
      "model": {"embed_tokens": {"weight": leaf(vocab, dim)},
                "layers": {"0": _torch_llama_layer(dim, heads, kv_heads, head_dim, ffn)}},
      "lm_head": {"weight": leaf(vocab, dim)},
      "conv": {"weight": leaf(16, 3, 5, 5), "bias": leaf(16)},  # nn.Conv2d: [out, in, kh, kw]
  }
  got = v_shapes(params, head_dim=head_dim, blocks=TORCH)
  layer = got["model"]["layers"]["0"]
  assert layer["self_attn"] == {"q_proj": {"weight": (heads,)}, "k_proj": {"weight": (kv_heads,)},
                                "v_proj": {"weight": (kv_heads * head_dim,)}, "o_proj": {"weight": (dim,)}}
  assert layer["mlp"] == {"gate_proj": {"weight": (ffn,)}, "down_proj": {"weight": (dim,)}}
  assert layer["input_layernorm"] == {"weight": ()}
  assert got["model"]["embed_tokens"] == {"weight": (vocab,)}
  assert got["lm_head"] == {"weight": (vocab,)}
  assert got["conv"] == {"weight": (16,), "bias": (16,)}
  roles = {r.path: r.role for r in optax_mini.explain(params, head_dim=head_dim, blocks=TORCH).rows}
  assert roles["['lm_head']['weight']"] == "neuron [lm_head], torch layout"
  assert roles["['model']['embed_tokens']['weight']"] == "token [*embed*]"  # [vocab, dim] either way


def test_heads_are_row_blocks_in_pytorch_layout():
  # Head 1 of a [heads*head_dim, in] weight is rows 4..7: its v is the mean
  # of their squares (float64 NumPy), the other heads' 0.
  g = np.zeros((12, 6), np.float32)
  g[4:8, :] = 2.0
  g[0, 0] = 3.0
  tx = optax_mini.scale_by_adam_mini(b1=0.0, b2=0.0, head_dim=4, blocks=TORCH)
  state = tx.init({"q_proj": {"weight": jnp.zeros((12, 6))}})
  _, state = tx.update({"q_proj": {"weight": jnp.asarray(g)}}, state)
  want = (g.astype(np.float64) ** 2).reshape(3, 4 * 6).mean(axis=1)
  np.testing.assert_allclose(state.nu["q_proj"]["weight"], want, rtol=1e-6)


def test_a_weight_that_fits_both_readings_raises_until_declared():
  params = {"layers": {"0": {"mlp": {"up_proj": {"weight": leaf(48, 32)}}}}}
  with pytest.raises(ValueError, match=(
      r"\['layers'\]\['0'\]\['mlp'\]\['up_proj'\]\['weight'\]: shape \(48, 32\).*"
      r"named 'weight'.*'o i'.*'i o'.*weight_layout='torch'.*weight_layout='flax'")):
    optax_mini.block_specs(params)
  with pytest.raises(ValueError, match="weight_layout"):
    optax_mini.explain(params)
  got = v_shapes(params, blocks=BlockRules(weight_layout="flax"))
  assert got["layers"]["0"]["mlp"]["up_proj"]["weight"] == (32,)
  got = v_shapes(params, blocks=TORCH)
  assert got["layers"]["0"]["mlp"]["up_proj"]["weight"] == (48,)


def test_a_weight_whose_shape_fits_one_reading_needs_no_declaration():
  # PyTorch GPT-2's Conv1D weights are [in, out] (the transpose of HF Flax's
  # [out, in] kernels); nn.MultiheadAttention's in_proj_weight is
  # [3*embed, embed]. Their rules' size checks fit one reading only.
  params = {"h": {"0": {"attn": {"c_attn": {"weight": leaf(16, 48)}},
                        "mlp": {"c_fc": {"weight": leaf(16, 64)}}}},
            "attn": {"in_proj_weight": leaf(48, 16), "in_proj_bias": leaf(48)}}
  specs = optax_mini.block_specs(params, head_dim=4)
  for spec, shape in ((specs["h"]["0"]["attn"]["c_attn"]["weight"], (16, 48)),
                      (specs["attn"]["in_proj_weight"], (48, 16))):
    assert [p.name for p in spec.parts] == ["q", "k", "v"]
    assert spec.layout(shape).num_blocks == 4 + 4 + 16  # q, k: per head; v: per neuron
  assert specs["h"]["0"]["mlp"]["c_fc"]["weight"].v_shape((16, 64)) == (64,)
  assert specs["attn"]["in_proj_bias"].v_shape((48,)) == (48,)


def test_kernels_ignore_weight_layout():
  # weight_layout concerns leaves named "weight" only: Flax kernels in the
  # same tree keep their [in, out] reading.
  params = {"q_proj": {"kernel": leaf(32, 16)}, "mlp": {"kernel": leaf(32, 64)}, "w": leaf(5, 7)}
  assert v_shapes(params, head_dim=8, blocks=TORCH) == v_shapes(params, head_dim=8)
  assert v_shapes(params, head_dim=8) == {"q_proj": {"kernel": (2,)}, "mlp": {"kernel": (64,)}, "w": (7,)}


def test_stacked_pytorch_weights():
  # A scanned stack of [out, in] weights, layer axis 0.
  params = {"layers": {"mlp": {"up_proj": {"weight": leaf(3, 48, 32)}}}}
  rules = BlockRules(weight_layout="torch", stacked={"layers": 0})
  assert v_shapes(params, blocks=rules) == {"layers": {"mlp": {"up_proj": {"weight": (3, 48)}}}}


def test_weight_layout_is_checked():
  with pytest.raises(ValueError, match=r"weight_layout must be one of \(None, 'torch', 'flax'\).*'pytorch'"):
    BlockRules(weight_layout="pytorch")


def test_dotted_flat_keys_read_as_their_components():
  # safetensors.flax.load_file: {"model.layers.0.self_attn.q_proj.weight": ...}
  nested = {"model": {"layers": {"0": _torch_llama_layer(32, 4, 2, 8, 48)}}}
  flat = {}
  for path, x in jax.tree_util.tree_flatten_with_path(nested)[0]:
    flat[".".join(k.key for k in path)] = x
  got = v_shapes(flat, head_dim=8, blocks=TORCH)
  want = v_shapes(nested, head_dim=8, blocks=TORCH)
  assert got == {".".join(k.key for k in p): s for p, s in jax.tree_util.tree_flatten_with_path(
      want, is_leaf=lambda x: isinstance(x, tuple))[0]}
  assert got["model.layers.0.self_attn.k_proj.weight"] == (2,)


def test_a_user_rules_layout_describes_the_weight_as_stored():
  # A user's fused kernel, [q | k | v, in] as stored: the rule's own layout is
  # read literally, with or without weight_layout.
  params = {"attn": {"my_qkv": {"weight": leaf(48, 16)}}, "mlp": {"up_proj": {"weight": leaf(64, 16)}}}
  rule = optax_mini.Rule("my_qkv", "q,k,v", layout="(p n h) i", where="pnh == 3*i")
  for weight_layout in (None, "torch", "flax"):
    rules = BlockRules(rules=[rule], weight_layout=weight_layout)
    qkv = optax_mini.block_specs({"attn": params["attn"]}, head_dim=4, blocks=rules)["attn"]["my_qkv"]["weight"]
    assert [p.name for p in qkv.parts] == ["q", "k", "v"], weight_layout
    assert qkv.layout((48, 16)).num_blocks == 4 + 4 + 16, weight_layout
  # A role-only user rule still gets the role's (Flax) layouts, reversed.
  rules = BlockRules(rules=[rule, ("up_proj", "neuron")], weight_layout="torch")
  spec = optax_mini.block_specs(params, head_dim=4, blocks=rules)
  assert spec["mlp"]["up_proj"]["weight"].v_shape((64, 16)) == (64,)


def test_the_weight_layout_error_shows_both_layouts_in_full():
  params = {"q_proj": {"weight": leaf(64, 64)}}
  with pytest.raises(ValueError, match=r"\('\(n h\) i'.*\('i \(n h\)'"):
    optax_mini.block_specs(params, head_dim=16)


def test_kernels_under_embedding_modules_are_dense_or_conv_kernels():
  # HF Flax ViT/BEiT/DINOv2 patch_embeddings/projection: a Conv kernel
  # [kh, kw, channels, hidden]; ResNet's embedder convolution likewise;
  # ALBERT's embedding_hidden_mapping_in: a Dense [embedding, hidden]; an
  # embed_out head [d, vocab]. One v per output, not per first-axis row.
  params = {
      "vit": {"embeddings": {"patch_embeddings": {"projection": {"kernel": leaf(8, 8, 3, 64)}},
                             "word_embeddings": {"embedding": leaf(100, 64)}}},
      "resnet": {"embedder": {"embedder": {"convolution": {"kernel": leaf(7, 7, 3, 16)}}}},
      "albert": {"encoder": {"embedding_hidden_mapping_in": {"kernel": leaf(32, 64)}}},
      "embed_out": {"kernel": leaf(64, 100)},
  }
  got = v_shapes(params)
  assert got["vit"]["embeddings"]["patch_embeddings"]["projection"]["kernel"] == (64,)
  assert got["vit"]["embeddings"]["word_embeddings"]["embedding"] == (100,)
  assert got["resnet"]["embedder"]["embedder"]["convolution"]["kernel"] == (16,)
  assert got["albert"]["encoder"]["embedding_hidden_mapping_in"]["kernel"] == (64,)
  assert got["embed_out"]["kernel"] == (100,)


def test_gpt_neo_dense_mlp_under_gpt2_names():
  # HF Flax GPT-Neo keeps GPT-2's mlp/c_fc and mlp/c_proj names on nn.Dense
  # kernels [in, out]; GPT-2's FlaxConv1D ones are [out, in]. The MLP widens.
  neo = {"mlp": {"c_fc": {"kernel": leaf(64, 256)}, "c_proj": {"kernel": leaf(256, 64)}}}
  gpt2 = {"mlp": {"c_fc": {"kernel": leaf(256, 64)}, "c_proj": {"kernel": leaf(64, 256)}}}
  want = {"mlp": {"c_fc": {"kernel": (256,)}, "c_proj": {"kernel": (64,)}}}
  assert v_shapes(neo) == want
  assert v_shapes(gpt2) == want


def test_distilbert_attention_names():
  d, heads, head_dim = 64, 4, 16
  attn = {name: {"kernel": leaf(d, d)} for name in ("q_lin", "k_lin", "v_lin", "out_lin")}
  got = v_shapes({"attention": attn}, head_dim=head_dim)["attention"]
  assert got == {"q_lin": {"kernel": (heads,)}, "k_lin": {"kernel": (heads,)},
                 "v_lin": {"kernel": (d,)}, "out_lin": {"kernel": (d,)}}


def test_wav2vec2_codebook_and_convolutions():
  """HF Flax wav2vec2, built from a small config: the quantizer's codebook
  [1, groups * entries, dim / groups] gets one v per code vector (as an
  embedding table per token; the default read it per column, averaging the
  code vectors together), its convolutions one per output channel."""
  transformers = pytest.importorskip(
      "transformers", reason="transformers (the test extra) builds the live wav2vec2 tree")
  import functools

  if not hasattr(transformers, "FlaxWav2Vec2ForPreTraining"):
    pytest.skip("this transformers has no Flax models (5.x dropped them; the test extra pins 4.57.6)")
  config = transformers.Wav2Vec2Config(
      hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
      conv_dim=(32, 48), conv_stride=(5, 2), conv_kernel=(10, 3), num_codevector_groups=2,
      num_codevectors_per_group=24, codevector_dim=40, proj_codevector_dim=24,
      num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
      do_stable_layer_norm=True, feat_extract_norm="layer",
  )
  model = transformers.FlaxWav2Vec2ForPreTraining(config, _do_init=False)
  params = jax.eval_shape(
      functools.partial(model.init_weights, input_shape=(1, 4000)), jax.random.key(0))
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
  got = v_shapes(params, head_dim=64 // 4)
  codes = config.num_codevector_groups * config.num_codevectors_per_group
  assert params["quantizer"]["codevectors"].shape == (1, codes, 40 // 2)
  assert got["quantizer"]["codevectors"] == (1, codes)
  convs = got["wav2vec2"]["feature_extractor"]["conv_layers"]
  assert [convs[str(i)]["conv"]["kernel"] for i in range(2)] == [(32,), (48,)]
  # The grouped positional convolution, weight-normed and stored as PyTorch
  # does ([out, in / groups, k]): one v per output channel.
  assert got["wav2vec2"]["encoder"]["pos_conv_embed"]["conv"]["weight_v"] == (64,)
  layer = got["wav2vec2"]["encoder"]["layers"]["0"]["attention"]
  assert layer["q_proj"]["kernel"] == (4,) and layer["v_proj"]["kernel"] == (64,)


def test_keras_hub_layouts_known_by_name():
  """keras-hub layouts that the live test (tests/test_keras_hub_models.py)
  does not build: Gemma 4's vision tower keeps heads-first q/k/v under
  attention/{query,key,value}/dense ("bsd,qdh->bsqh"); Gemma 3n's audio
  relative positions' keys pos_proj [in, heads*head_dim]; VideoPrism's
  pooling queries [queries, dim] and pooling attention [in, heads, head_dim];
  Moonshine's and T5Gemma2's attention [in, heads, head_dim]."""
  vision = {name: {"dense": {"kernel": leaf(4, 32, 8)}} for name in ("query", "key", "value")}
  params = {
      "image_encoder": {"encoder_block_0": {"attention": vision}},
      "audio": {"relative_position_embedding": {"pos_proj": {"kernel": leaf(16, 16)}}},
      "video_pooler": {"pooling_attention_query": leaf(3, 32),
                       "pooling_attention": {"query": {"kernel": leaf(32, 4, 8)}}},
      "moonshine_multi_head_attention_0": {"key": {"kernel": leaf(32, 4, 8)}},
      "merged_attention": {"value": {"kernel": leaf(32, 2, 8)}},
  }
  got = v_shapes(params, head_dim={"audio": 8})
  attention = got["image_encoder"]["encoder_block_0"]["attention"]
  assert attention["query"]["dense"]["kernel"] == (4,)  # per head, heads first
  assert attention["value"]["dense"]["kernel"] == (4, 8)  # per output neuron
  assert got["audio"]["relative_position_embedding"]["pos_proj"]["kernel"] == (2,)
  assert got["video_pooler"]["pooling_attention_query"] == (3,)
  assert got["video_pooler"]["pooling_attention"]["query"]["kernel"] == (4,)
  assert got["moonshine_multi_head_attention_0"]["key"]["kernel"] == (4,)
  assert got["merged_attention"]["value"]["kernel"] == (2, 8)


def test_one_by_one_convolution_attention_kernels():
  """1x1 convolutions as attention projections (keras-hub's MobileNetV5,
  [1, 1, in, out]): a query kernel one v per head (head_dim cuts its
  output), a value kernel one per output channel."""
  params = {"attn": {"query_proj": {"kernel": leaf(1, 1, 32, 32)},
                     "value_proj": {"kernel": leaf(1, 1, 32, 8)}}}
  got = v_shapes(params, head_dim=8)["attn"]
  assert got["query_proj"]["kernel"] == (4,)
  assert got["value_proj"]["kernel"] == (8,)


def test_a_user_rule_for_a_module_leaves_its_bias_plain_adam():
  """Keras' EinsumDense biases are [heads, head_dim]: a user rule for the
  module ("attention/key", meant for its kernel) read one as a kernel, one v
  for the whole bias under head_dim=8 (silently). A rule claims a bias only
  where its pattern names it."""
  params = {"attention": {"key": {"kernel": leaf(32, 32), "bias": leaf(4, 8)},
                          "value": {"kernel": leaf(32, 32), "bias": leaf(4, 8)}}}
  rules = BlockRules(rules=[("attention/key", "heads"), ("attention/value", "value")])
  got = v_shapes(params, head_dim=8, blocks=rules)["attention"]
  assert got["key"] == {"kernel": (4,), "bias": (4, 8)}
  assert got["value"] == {"kernel": (32,), "bias": (4, 8)}
  named = BlockRules(rules=[("attention/key", "heads"), ("attention/*/bias", "tensor")])
  got = v_shapes(params, head_dim=8, blocks=named)["attention"]
  assert got["key"] == {"kernel": (4,), "bias": ()}
  assert got["value"] == {"kernel": (32,), "bias": ()}


def test_the_attention_output_kernel_settles_its_query_key_value_layout():
  """flax's own attention modules under a name of the user's (nnx's
  MultiHeadAttention, linen's MultiHeadDotProductAttention) keep q/k/v as
  [in, heads, head_dim], which could as well be heads-first; their `out`
  kernel [heads, head_dim, out] says which axis is the input and the head
  size, so no head counts are needed. Heads-first q/k/v beside one (Keras'
  attention_output) read heads-first. Counts from the configs."""
  from flax import linen, nnx

  class Block(nnx.Module):
    def __init__(self, rngs):
      self.attn = nnx.MultiHeadAttention(
          num_heads=8, in_features=64, qkv_features=128, decode=False, rngs=rngs)

  got = v_shapes(nnx.to_pure_dict(nnx.state(Block(nnx.Rngs(0)), nnx.Param)))["attn"]
  assert got["query"]["kernel"] == (8,) and got["key"]["kernel"] == (8,)
  assert got["value"]["kernel"] == (8, 16) and got["out"]["kernel"] == (64,)

  class Linen(linen.Module):
    @linen.compact
    def __call__(self, x):
      return linen.MultiHeadDotProductAttention(num_heads=4, name="self_attn_block")(x, x)

  params = Linen().init(jax.random.key(0), jnp.zeros((1, 3, 32)))["params"]
  got = v_shapes(params)["self_attn_block"]
  assert got["query"]["kernel"] == (4,) and got["value"]["kernel"] == (4, 8)

  # Heads-first under names no rule knows, grouped-query: 4 query heads,
  # 1 key/value head, of 8, width 32.
  attn = {"query": {"kernel": leaf(4, 32, 8)}, "key": {"kernel": leaf(1, 32, 8)},
          "value": {"kernel": leaf(1, 32, 8)}, "attention_output": {"kernel": leaf(4, 8, 32)}}
  got = v_shapes({"blk": {"mixer": attn}})["blk"]["mixer"]
  assert got["query"]["kernel"] == (4,) and got["key"]["kernel"] == (1,)
  assert got["value"]["kernel"] == (1, 8)
  # Without the out kernel nothing says which: an error (tests/test_errors.py).
  del attn["attention_output"]
  with pytest.raises(ValueError, match="'i n h' or 'n i h'"):
    v_shapes({"blk": {"mixer": attn}})


def test_a_layer_axis_declared_where_it_is_not_raises():
  # T5X's / flaxformer's scanned layers keep the layer axis second: [in, layers, out],
  # norm scales [d, layers]. Axis 0 read as the layers would average every
  # kernel's layers together (silently, for a decoder-only tree).
  layers, d, mlp = 3, 96, 200
  params = {"decoder": {"decoder": {
      "mlp": {"wi_0": {"kernel": leaf(d, layers, mlp)}, "wo": {"kernel": leaf(mlp, layers, d)}},
      "pre_mlp_layer_norm": {"scale": leaf(d, layers)},
  }}}
  with pytest.raises(ValueError, match=r"different lengths along the declared layer axis.*stacked=\{'decoder/decoder': 1\}"):
    v_shapes(params, blocks=BlockRules(stacked={"decoder/decoder": 0}))
  got = v_shapes(params, blocks=BlockRules(stacked={"decoder/decoder": 1}))["decoder"]["decoder"]
  assert got["mlp"]["wi_0"]["kernel"] == (layers, mlp)
  assert got["mlp"]["wo"]["kernel"] == (layers, d)
  assert got["pre_mlp_layer_norm"]["scale"] == (layers,)
  # Two stacks of different depth under one pattern (MaxText DeepSeek's dense
  # and MoE layers) are two stacks, each of one length.
  two = {"decoder": {"dense_layers": {"mlp": {"kernel": leaf(d, 2, mlp)}},
                     "moe_layers": {"mlp": {"kernel": leaf(d, 5, mlp)}}}}
  got = v_shapes(two, blocks=BlockRules(stacked={"decoder/*layers": 1}))["decoder"]
  assert got["dense_layers"]["mlp"]["kernel"] == (2, mlp)
  assert got["moe_layers"]["mlp"]["kernel"] == (5, mlp)


def test_t5x_flaxformer_and_flax_gemma_example_layouts():
  d, heads, hd = 96, 6, 16
  params = {
      # T5X / flaxformer decoder self-attention: flat [d, heads * head_dim].
      "decoder": {"layers_0": {"self_attention": {
          "query": {"kernel": leaf(d, heads * hd)}, "key": {"kernel": leaf(d, heads * hd)},
          "value": {"kernel": leaf(d, heads * hd)}, "out": {"kernel": leaf(heads * hd, d)}}},
          # flaxformer's fused projections [d, parts, heads, head_dim].
          "layers_1": {"self_attention": {"qkv_fused": {"kernel": leaf(d, 3, heads, hd)}},
                       "encoder_decoder_attention": {"kv_fused": {"kernel": leaf(d, 2, heads, hd)}}}},
      # Flax's NNX Gemma example: nnx.Einsum weights named kernel, heads first.
      "layer_0": {"attn": {"q_einsum": {"kernel": leaf(heads, d, hd)},
                           "kv_einsum": {"kernel": leaf(2, 2, d, hd)},
                           "attn_vec_einsum": {"kernel": leaf(heads, hd, d)}}},
  }
  got = v_shapes(params, head_dim=hd)
  attn = got["decoder"]["layers_0"]["self_attention"]
  assert attn["query"]["kernel"] == (heads,) and attn["key"]["kernel"] == (heads,)
  assert attn["value"]["kernel"] == (heads * hd,) and attn["out"]["kernel"] == (d,)
  report = optax_mini.explain(params, head_dim=hd)
  blocks = {r.path: r.num_blocks for r in report.rows}
  # q and k one per head, v one per output neuron.
  assert blocks["['decoder']['layers_1']['self_attention']['qkv_fused']['kernel']"] == 2 * heads + heads * hd
  assert blocks["['decoder']['layers_1']['encoder_decoder_attention']['kv_fused']['kernel']"] == heads + heads * hd
  assert blocks["['layer_0']['attn']['q_einsum']['kernel']"] == heads
  # [2, K, D, H] with K = 2 (a square "window" of 2 in front): k per kv head, v per neuron.
  assert blocks["['layer_0']['attn']['kv_einsum']['kernel']"] == 2 + 2 * hd
  assert blocks["['layer_0']['attn']['attn_vec_einsum']['kernel']"] == d


def test_haiku_and_recurrentgemma_b_is_a_bias_and_a_batch_norm_stack_raises():
  params = {"linear": {"w": leaf(8, 16), "b": leaf(16)},
            "rg_lru": {"input_gate": {"w": leaf(10, 32, 32), "b": leaf(10, 32)}}}
  got = v_shapes(params, blocks=BlockRules(rules=[("rg_lru/*/w", "neuron", "e i o")]))
  assert got["linear"]["b"] == (16,)  # plain Adam, as every bias
  assert got["rg_lru"]["input_gate"]["b"] == (10, 32)  # not averaged across its blocks
  mask = optax_mini.default_weight_decay_mask(
      params, blocks=BlockRules(rules=[("rg_lru/*/w", "neuron", "e i o")]))
  assert not mask["linear"]["b"] and not mask["rg_lru"]["input_gate"]["b"] and mask["linear"]["w"]
  # An nnx.vmap-stacked batch norm [layers, d]: a stack nobody declared.
  with pytest.raises(ValueError, match=r"stack of layers"):
    v_shapes({"layers": {"bn": {"scale": leaf(4, 16)}, "dense": {"kernel": leaf(4, 16, 16)}}})


def test_a_learned_token_is_one_block():
  # big_vision's MAP head probe and ViT cls token [1, 1, d]: one v, as a
  # class token under an embedding's name (HF ViT's cls_token) gets.
  params = {"MAPHead_0": {"probe": leaf(1, 1, 96)}, "cls": leaf(1, 1, 96),
            "embeddings": {"cls_token": leaf(1, 1, 96)}, "Conv_0": {"kernel": leaf(1, 1, 96)}}
  got = v_shapes(params)
  assert got["MAPHead_0"]["probe"] == (1, 1) and got["cls"] == (1, 1)
  assert got["embeddings"]["cls_token"] == (1, 1)
  assert got["Conv_0"]["kernel"] == (96,)  # a 1x1 convolution from one channel: per output


def test_recurrentgemma_layers():
  # recurrentgemma's Griffin block at RecurrentGemma-2B's widths, scaled down:
  # width 64, 4 heads of 16 (one key/value head), RG-LRU in 4 blocks of 16, MLP 3x.
  width, heads, hd, blocks, mlp = 64, 4, 16, 4, 192
  params = {
      "blocks.0": {"recurrent_block": {
          "rg_lru": {"input_gate": {"w": leaf(blocks, width // blocks, width // blocks),
                                    "b": leaf(blocks, width // blocks)},
                     "a_param": leaf(width)},
          "conv_1d": {"w": leaf(4, width), "b": leaf(width)}},
          "mlp_block": {"ffw_up": {"w": leaf(2, width, mlp), "b": leaf(2, 1, 1, mlp)},
                        "ffw_down": {"kernel": leaf(mlp, width), "bias": leaf(width)}}},
      "blocks.2": {"attention_block": {
          "proj_q": {"kernel": leaf(width, heads * hd)}, "proj_k": {"kernel": leaf(width, hd)},
          "proj_v": {"kernel": leaf(width, hd)}, "proj_final": {"kernel": leaf(heads * hd, width)}}},
  }
  got = v_shapes(params, head_dim=hd)
  rec = got["blocks.0"]["recurrent_block"]
  assert rec["rg_lru"]["input_gate"]["w"] == (blocks, width // blocks)  # per block and output
  assert rec["rg_lru"]["input_gate"]["b"] == (blocks, width // blocks)  # plain Adam
  assert rec["conv_1d"]["b"] == (width,)
  mlp_v = got["blocks.0"]["mlp_block"]
  assert mlp_v["ffw_up"]["w"] == (2, mlp) and mlp_v["ffw_up"]["b"] == (2, 1, 1, mlp)
  attn = got["blocks.2"]["attention_block"]
  assert attn["proj_q"]["kernel"] == (heads,) and attn["proj_k"]["kernel"] == (1,)
  assert attn["proj_v"]["kernel"] == (hd,) and attn["proj_final"]["kernel"] == (width,)


def test_nanodo_attention_is_read_beside_its_attn_out_proj():
  """nanodo (and AlgoPerf's LM workload): query/key/value DenseGeneral
  kernels [D, H, Dh] and the output attn_out_proj [H, Dh, D]. Its output
  raised as an unknown 3-D kernel, and the q/k/v as heads-first or not; the
  output kernel is an attention output (one v per model dimension) and
  says which axis of the others is the input."""
  d, h, dh = 48, 4, 8  # [48, 4, 8] read heads-first would be 48 "heads"
  attn = {name: {"kernel": leaf(d, h, dh)} for name in ("query", "key", "value")}
  attn["attn_out_proj"] = {"kernel": leaf(h, dh, d)}
  got = v_shapes({"CausalAttn_0": attn})["CausalAttn_0"]
  assert got["query"]["kernel"] == (h,)
  assert got["key"]["kernel"] == (h,)
  assert got["value"]["kernel"] == (h, dh)
  assert got["attn_out_proj"]["kernel"] == (d,)


def test_axlearn_names_are_read_as_stored():
  """AXLearn names every parameter `weight` and mixes layouts (its
  attention.py, layers.py, decoder.py, mixture_of_experts.py): o_proj
  [model, heads, head_dim] output first, token_emb and lm_head [vocab, dim],
  Linear [in, out], the router [in, experts], experts [E, in, F] / [E, F,
  out]. Under weight_layout='flax' the first three were averaged silently
  (one v per head_dim position, per embedding column)."""
  d, n, h, f, e, vocab = 16, 4, 8, 24, 3, 40
  layer = {
      "self_attention": {"attention": {
          "i_proj": {"i_proj": {"qkv_proj": {"weight": leaf(3, d, n, h)}}},
          "o_proj": {"weight": leaf(d, n, h)}}},
      "feed_forward": {"gate_weight": leaf(d, e), "wi_0_weight": leaf(e, d, f),
                       "wi_1_weight": leaf(e, d, f), "wo_weight": leaf(e, f, d)},
  }
  params = {"decoder": {"emb": {"token_emb": {"weight": leaf(vocab, d)}},
                        "lm_head": {"weight": leaf(vocab, d)},
                        "transformer": {"layer0": layer}}}
  for blocks in (None, BlockRules(weight_layout="flax"), BlockRules(weight_layout="torch")):
    got = v_shapes(params, blocks=blocks)["decoder"]
    assert got["emb"]["token_emb"]["weight"] == (vocab,)
    assert got["lm_head"]["weight"] == (vocab,)
    attention = got["transformer"]["layer0"]["self_attention"]["attention"]
    assert attention["o_proj"]["weight"] == (d,)
    assert attention["i_proj"]["i_proj"]["qkv_proj"]["weight"] == (3, n, h)
    rows = {row.path: row for row in optax_mini.explain(params, blocks=blocks).rows}
    fused = rows["['decoder']['transformer']['layer0']['self_attention']['attention']['i_proj']['i_proj']['qkv_proj']['weight']"]
    assert fused.num_blocks == n + n + n * h  # q and k one v per head, v one per neuron
    ff = got["transformer"]["layer0"]["feed_forward"]
    assert ff["gate_weight"] == (e,)
    assert ff["wi_0_weight"] == ff["wi_1_weight"] == (e, f)
    assert ff["wo_weight"] == (e, d)


def test_praxis_attention_output_first_and_combined_qkv():
  """praxis' AttentionProjection keeps q/k/v as w [model, heads, head_dim]
  and the output projection post/w [model, heads, head_dim] with the OUTPUT
  first ("BNH,DNH->BD"); CombinedQKVProjectionLayer's combined_qkv/w is [3,
  model, heads, head_dim]. Both raised, and their errors' options gave one v
  per input neuron (post) or averaged q, k and v together (combined). post
  also says how its q/k/v are laid out: no head counts needed."""
  d, n, h = 48, 4, 8
  attention = {name: {"w": leaf(d, n, h), "b": leaf(n, h)} for name in ("query", "key", "value")}
  attention["post"] = {"w": leaf(d, n, h), "b": leaf(d)}
  got = v_shapes({"x_layers_0": {"self_attention": attention}})["x_layers_0"]["self_attention"]
  assert got["query"]["w"] == got["key"]["w"] == (n,)
  assert got["value"]["w"] == (n, h)
  assert got["post"]["w"] == (d,)
  assert got["post"]["b"] == (d,)  # a bias: plain Adam
  combined = {"self_attention": {"combined_qkv": {"w": leaf(3, d, n, h)}, "post": {"w": leaf(d, n, h)}}}
  rows = optax_mini.explain(combined).rows
  assert [row.num_blocks for row in rows] == [n + n + n * h, d]


def test_adaptive_norm_tables_and_tensor_parallel_embeddings():
  """LTX-Video's scale_shift_table [2, d] (its rows a shift and a scale) was
  read as a kernel, one v per channel: shift and scale averaged together.
  Each row is a block, as a table's (PixArt's, WAN's [1, 6, d] too).
  xlstm-jax's tensor-parallel embedding [shards, vocab, dim / shards] was
  read rows-first: one v per shard for all its tokens. Its rows are the
  vocabulary (by far the largest axis); Gemma 4's per-layer table [vocab,
  layers, dim] keeps its first."""
  d = 32
  params = {"scale_shift_table": leaf(2, d),
            "blocks": {"adaln_scale_shift_table": leaf(1, 6, d)},
            "token_embedding": {"embedding": leaf(4, 200, d // 4)},
            "embedder": {"per_layer_input_embedding": leaf(200, 35, 8)}}
  got = v_shapes(params)
  assert got["scale_shift_table"] == (2,)
  assert got["blocks"]["adaln_scale_shift_table"] == (1, 6)
  assert got["token_embedding"]["embedding"] == (200,)
  assert got["embedder"]["per_layer_input_embedding"] == (200,)


def test_a_norm_scale_of_several_axes_in_a_declared_stack_is_one_block():
  """xlstm-jax's multi-head norm outnorm/sharded/scale [layers, shards,
  heads, head_dim]: once the stack is declared, a norm's scale is one v per
  tensor (per layer), as the official rule gives any norm; it raised as an
  unknown 3-D kernel, and the error's options made it per feature."""
  params = {"blocks": {"block": {"outnorm": {"sharded": {"scale": leaf(3, 2, 4, 8)}},
                                 "ffn_norm": {"sharded": {"scale": leaf(3, 1, 16)}}}}}
  got = v_shapes(params, blocks=BlockRules(stacked={"blocks/block": 0}))["blocks"]["block"]
  assert got["outnorm"]["sharded"]["scale"] == (3,)
  assert got["ffn_norm"]["sharded"]["scale"] == (3,)


def test_grok1_mixture_of_experts_in_haiku():
  """Grok-1 (Haiku, xai-org/grok-1 model.py): DenseBlock's hk.Linear layers
  linear (gate), linear_v (value) and linear_1 (down), stacked over the
  experts under moe: [E, d, F], [E, d, F], [E, F, d]. linear_v and linear_1
  raised; each expert's output neurons are blocks of their own."""
  e, d, f = 4, 32, 48
  layer = "transformer/decoder_layer_0/"
  params = {layer + "moe/linear": {"w": leaf(e, d, f)}, layer + "moe/linear_v": {"w": leaf(e, d, f)},
            layer + "moe/linear_1": {"w": leaf(e, f, d)}, layer + "router": {"w": leaf(d, e)}}
  got = v_shapes(params)
  assert got[layer + "moe/linear"]["w"] == got[layer + "moe/linear_v"]["w"] == (e, f)
  assert got[layer + "moe/linear_1"]["w"] == (e, d)
  assert got[layer + "router"]["w"] == (e,)


# openpi's LoRA over Gemma's einsums (lora.py): each factor's einsum, A then
# B; the factor's axes that reach the output are its blocks, the others (the
# contracted ones) are averaged. C: the k|v or gate|up parts, L: the rank.
_OPENPI_LORA_EINSUMS = {
    "q_einsum": ("BTD,NDL->BTNL", "BTNL,NLH->BTNH"),
    "kv_einsum": ("BSD,CKDL->CBSKL", "CBSKL,CKLH->CBSKH"),
    "attn_vec_einsum": ("BTNH,NHL->BTL", "BTL,NLD->BTD"),
    "gating_einsum": ("BTD,CDL->CBTL", "CBTL,CLF->CBTF"),
    "linear": ("BTF,FL->BTL", "BTL,LD->BTD"),
}


def test_openpi_lora_factors_keep_the_heads_and_parts_of_their_einsum():
  """openpi (pi0's LoRA fine-tuning) keeps the adapted einsum's leading axes
  in both factors: q_einsum/lora_a [N, D, r], kv_einsum/lora_b [2, K, r, H],
  gating_einsum_lora_a [2, D, r]. The [in..., rank] / [rank, out...] reading
  put every head, k with v and gate with up in one v (and kept B's rank). Its
  action expert's einsums are q_einsum_1, kv_einsum_1, attn_vec_einsum_1:
  read as the VLM's (they raised). v against float64 NumPy, one v per axis
  each factor's einsum keeps, with the layer axis of openpi's nn.scan."""
  layers = 2
  sizes = {"N": 4, "K": 1, "D": 32, "H": 8, "L": 4, "F": 64, "C": 2}
  shapes, kept = {}, {}
  for name, eqns in _OPENPI_LORA_EINSUMS.items():
    in_mlp = name in ("gating_einsum", "linear")
    for suffix in ("",) if in_mlp else ("", "_1"):
      for which, eqn in zip("ab", eqns):
        inputs, out = eqn.split("->")
        letters = inputs.split(",")[1]
        path = (("mlp", f"{name}_lora_{which}") if in_mlp
                else ("attn", f"{name}{suffix}", f"lora_{which}"))
        shapes[path] = (layers, *(sizes[c] for c in letters))
        kept[path] = (0, *(1 + i for i, c in enumerate(letters) if c in out))

  def nest(flat):
    tree = {}
    for path, value in flat.items():
      node = tree.setdefault("layers", {})
      for m in path[:-1]:
        node = node.setdefault(m, {})
      node[path[-1]] = value
    return tree

  rng = np.random.default_rng(0)
  grads = {path: rng.standard_normal(shape).astype(np.float32) for path, shape in shapes.items()}
  tx = optax_mini.scale_by_adam_mini(b2=0.0, blocks=BlockRules(stacked={"layers": 0}))
  params = nest({path: jnp.zeros(shape) for path, shape in shapes.items()})
  _, state = tx.update(nest({path: jnp.asarray(g) for path, g in grads.items()}), tx.init(params))
  for path, g in grads.items():
    node = state.nu["layers"]
    for m in path:
      node = node[m]
    averaged = tuple(a for a in range(g.ndim) if a not in kept[path])
    expected = np.mean(g.astype(np.float64) ** 2, axis=averaged)
    np.testing.assert_allclose(np.asarray(node), expected, rtol=1e-5, err_msg="/".join(path))
  # the action expert's weights: per head (q), k per kv head and v per neuron, per output
  n, k, d, h = sizes["N"], sizes["K"], sizes["D"], sizes["H"]
  expert = {"layers": {"attn": {"q_einsum_1": {"w": leaf(layers, n, d, h)},
                                "kv_einsum_1": {"w": leaf(layers, 2, k, d, h)},
                                "attn_vec_einsum_1": {"w": leaf(layers, n, h, d)}}}}
  specs = optax_mini.block_specs(expert, blocks=BlockRules(stacked={"layers": 0}))["layers"]["attn"]
  assert v_shapes(expert, blocks=BlockRules(stacked={"layers": 0}))["layers"]["attn"] == {
      "q_einsum_1": {"w": (layers, n)}, "kv_einsum_1": {"w": (layers, 2, k, h)},
      "attn_vec_einsum_1": {"w": (layers, d)}}
  assert [p.name for p in specs["kv_einsum_1"]["w"].parts] == ["k", "v"]


def test_an_attention_output_with_its_querys_shape_is_stored_output_first():
  """DeepMind's simply stores o_proj/w [model, heads, head_dim] like its
  q_proj ("ihd,...hd->...i"), where tunix stores [heads, head_dim, model]
  under the same name. Read as tunix's, every output neuron and head shared
  one v per head_dim position (Qwen3-8B: 4,608 v where 147,456). v against
  float64 NumPy: one per output neuron (simply's axis 0, tunix's axis 2)."""
  d, heads, kv, hd = 64, 4, 2, 16
  rng = np.random.default_rng(0)
  for o_shape, kept in (((d, heads, hd), 0), ((heads, hd, d), 2)):
    shapes = {"q_proj": (d, heads, hd), "k_proj": (d, kv, hd), "v_proj": (d, kv, hd), "o_proj": o_shape}
    grads = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    tx = optax_mini.scale_by_adam_mini(b2=0.0)  # nothing passed: the shapes say it all
    params = {"block_0": {"attn": {n: {"w": jnp.zeros(s)} for n, s in shapes.items()}}}
    _, state = tx.update({"block_0": {"attn": {n: {"w": jnp.asarray(g)} for n, g in grads.items()}}},
                         tx.init(params))
    nu = {n: np.asarray(state.nu["block_0"]["attn"][n]["w"]) for n in shapes}
    g64 = {n: g.astype(np.float64) ** 2 for n, g in grads.items()}
    np.testing.assert_allclose(nu["o_proj"], g64["o_proj"].mean(
        axis=tuple(a for a in range(3) if a != kept)), rtol=1e-5)
    np.testing.assert_allclose(nu["q_proj"], g64["q_proj"].mean(axis=(0, 2)), rtol=1e-5)  # per head
    np.testing.assert_allclose(nu["v_proj"], g64["v_proj"].mean(axis=0), rtol=1e-5)


def test_a_map_heads_probe_is_one_v_per_query_and_a_one_input_dense_per_neuron():
  """Octo: its MAP heads' learned queries probe [1, queries, dim] raised,
  with options that averaged the queries; its proprio projection, a Dense of
  one input (kernel [1, dim]), was read as one learned token (one v for the
  whole kernel). v against float64 NumPy."""
  queries, dim = 6, 32
  rng = np.random.default_rng(0)
  grads = {"map_head": {"probe": rng.standard_normal((1, queries, dim)).astype(np.float32)},
           "cls": {"probe": rng.standard_normal((1, 1, dim)).astype(np.float32)},
           "obs_proprio_projection": {"kernel": rng.standard_normal((1, dim)).astype(np.float32)}}
  tx = optax_mini.scale_by_adam_mini(b2=0.0)
  _, state = tx.update(jax.tree.map(jnp.asarray, grads), tx.init(jax.tree.map(jnp.zeros_like, grads)))
  sq = jax.tree.map(lambda g: g.astype(np.float64) ** 2, grads)
  np.testing.assert_allclose(state.nu["map_head"]["probe"], sq["map_head"]["probe"].mean(axis=2), rtol=1e-5)
  np.testing.assert_allclose(state.nu["cls"]["probe"], sq["cls"]["probe"].mean(axis=2), rtol=1e-5)
  np.testing.assert_allclose(state.nu["obs_proprio_projection"]["kernel"],
                             sq["obs_proprio_projection"]["kernel"].mean(axis=0), rtol=1e-5)


def test_simply_experts_are_one_v_per_expert_neuron():
  """simply's mixture (Qwen3-30B-A3B): ffn_0 and ffn_0_gate [E, d, ffn]
  ("eio,e...i->e...o"), ffn_1 [E, ffn, d] raised as unknown 3-D kernels; one
  v per expert and output neuron, against float64 NumPy."""
  d, experts, ffn = 32, 4, 16
  rng = np.random.default_rng(0)
  grads = {"ffn": {"router": {"w": rng.standard_normal((d, experts))},
                   "ffn_0": {"w": rng.standard_normal((experts, d, ffn))},
                   "ffn_0_gate": {"w": rng.standard_normal((experts, d, ffn))},
                   "ffn_1": {"w": rng.standard_normal((experts, ffn, d))}}}
  grads = jax.tree.map(lambda g: g.astype(np.float32), grads)
  tx = optax_mini.scale_by_adam_mini(b2=0.0)
  _, state = tx.update(jax.tree.map(jnp.asarray, grads), tx.init(jax.tree.map(jnp.zeros_like, grads)))
  for name, averaged in (("router", 0), ("ffn_0", 1), ("ffn_0_gate", 1), ("ffn_1", 1)):
    g = grads["ffn"][name]["w"].astype(np.float64)
    np.testing.assert_allclose(state.nu["ffn"][name]["w"], np.mean(g ** 2, axis=averaged), rtol=1e-5)


def _nu_after_one_step(grads, **kwargs):
  """v after one update with b2 = 0: each block's mean of g**2."""
  tx = optax_mini.scale_by_adam_mini(b2=0.0, **kwargs)
  params = jax.tree.map(jnp.zeros_like, grads)
  _, state = tx.update(jax.tree.map(jnp.asarray, grads), tx.init(params))
  return state.nu


def test_gemma_multimodal_3n_and_4_projections_are_one_v_per_output():
  """gemma 4.0.1: the embedder's projections of soft tokens into the text
  width, mm_input_projection/w and audio_input_projection/w [in, D]
  ("...tm,md->...td"), and Gemma 3n's per_layer_input_projection/w [D,
  layers, P] and AltUp's altup_unembed_projection_k [D, D] were read as
  tables under "embedder"/"unembed" (one v per input); AltUp's
  prediction_coefs [modalities, i, j] raised; Gemma 4's narrowing shared MLP
  mlp2/gating_einsum [2, F, D] was read [2, D, F] by its width. Against
  float64 NumPy, each axis its einsum keeps."""
  rng = np.random.default_rng(0)
  d, vision, layers, per_layer, f = 32, 24, 3, 8, 16
  shapes = {
      ("embedder", "mm_input_projection", "w"): ((vision, d), (0,)),
      ("embedder", "audio_input_projection", "w"): ((d, d), (0,)),
      ("embedder", "per_layer_input_projection", "w"): ((d, layers, per_layer), (0,)),
      ("altup_unembed_projection_0", "altup_unembed_projection_0"): ((d, d), (0,)),
      ("layer_0", "altup", "prediction_coefs"): ((4, 4, 4), (0,)),
      ("layer_0", "mlp2", "gating_einsum"): ((2, f, d), (2,)),
      # Gemma 4's experts [E, 2, F, D] (its error's advice was a layer stack)
      ("layer_0", "mlp", "gating_einsum", "w"): ((4, 2, f // 2, d), (3,)),
  }
  grads = {}
  for path, (shape, _) in shapes.items():
    node = grads
    for c in path[:-1]:
      node = node.setdefault(c, {})
    node[path[-1]] = rng.standard_normal(shape).astype(np.float32)
  nu = _nu_after_one_step(grads)
  for path, (_, averaged) in shapes.items():
    g, v = grads, nu
    for c in path:
      g, v = g[c], v[c]
    np.testing.assert_allclose(v, np.mean(g.astype(np.float64) ** 2, axis=averaged), rtol=1e-5,
                               err_msg="/".join(path))


def test_gemma_lora_factors_are_lora_factors_not_biases():
  """gm.nn.LoRA names its factors lora/a [in..., r] and lora/b [r, out...]:
  B matched Haiku's bias name "b" (one v per element, never decayed), and an
  A under the embedder's projection was read as a table."""
  rng = np.random.default_rng(0)
  rank, d, heads, hd = 4, 32, 2, 8
  grads = {
      "attn": {"q_einsum": {"_LoRAEinsum_0": {"lora": {
          "a": rng.standard_normal((d, rank)), "b": rng.standard_normal((rank, heads, hd))}}}},
      "embedder": {"mm_input_projection": {"_LoRAEinsum_0": {"lora": {
          "a": rng.standard_normal((24, rank)), "b": rng.standard_normal((rank, d))}}}},
  }
  grads = jax.tree.map(lambda g: g.astype(np.float32), grads)
  nu = _nu_after_one_step(grads)
  for module in (nu["attn"]["q_einsum"], nu["embedder"]["mm_input_projection"]):
    lora = module["_LoRAEinsum_0"]["lora"]
    assert lora["a"].shape == (rank,)  # one per rank direction
  q = grads["attn"]["q_einsum"]["_LoRAEinsum_0"]["lora"]["b"].astype(np.float64)
  np.testing.assert_allclose(nu["attn"]["q_einsum"]["_LoRAEinsum_0"]["lora"]["b"],
                             np.mean(q ** 2, axis=0), rtol=1e-5)  # one per output neuron
  mask = optax_mini.default_weight_decay_mask(grads)
  assert mask["attn"]["q_einsum"]["_LoRAEinsum_0"]["lora"] == {"a": True, "b": True}


def test_pytorch_checkpoint_experts_projector_and_norm_names():
  """HF PyTorch checkpoints (weight_layout='torch'): JetMoE's experts
  input_linear [E, 2F, D] (F.linear(x, w[e])) had the torch reading of
  [E, in, out] reverse the experts axis to last; Gemma 3's raw
  mm_input_projection_weight [in, D] (x @ W) was transposed by its name;
  DBRX's attention under norm_attn_norm was taken for a norm's scale; a
  per-head norm [heads, head_dim] in unrolled layers (Cohere's q_norm) for
  an undeclared stack; XLNet's two segment keys were averaged. Against
  float64 NumPy."""
  rng = np.random.default_rng(0)
  e, f2, d = 4, 24, 16
  flat = {
      "model.layers.0.mlp.input_linear.weight": ((e, f2, d), (2,)),
      "model.multi_modal_projector.mm_input_projection_weight": ((d, 2 * d), (0,)),
      "transformer.blocks.0.norm_attn_norm.attn.out_proj.weight": ((d, d), (1,)),
      "model.layers.0.self_attn.q_norm.weight": ((2, 8), (0, 1)),
      # Gemma 3n's AltUp prediction coefficients, an nn.Linear [n * n, n]: per output
      "model.language_model.layers.0.altup.prediction_coefs.weight": ((16, 4), (1,)),
      # XLNet's segment keys [segments, heads, head_dim]: one v per (segment, head)
      "transformer.layer.0.rel_attn.seg_embed": ((2, 4, 8), (2,)),
  }
  grads = {k: rng.standard_normal(shape).astype(np.float32) for k, (shape, _) in flat.items()}
  nu = _nu_after_one_step(grads, blocks=BlockRules(weight_layout="torch"))
  for key, (_, averaged) in flat.items():
    np.testing.assert_allclose(nu[key], np.mean(grads[key].astype(np.float64) ** 2, axis=averaged),
                               rtol=1e-5, err_msg=key)


def test_pytorch_checkpoint_experts_stored_in_or_out_first():
  """HF's Aria keeps its grouped-GEMM experts as [E, in, out] under a
  PyTorch weight's name (experts/fc1 [E, d, 2F], fc2 [E, F, d]: tokens @
  weight[e]); the torch reading, [E, out, in], kept each expert's inputs and
  averaged its outputs, silently (fc2 is square: no shape tells). Granite
  MoE's ParallelExperts under block_sparse_moe, [E, out, in] (F.linear(x,
  weight[e])), raised. One v per expert and output neuron, against float64
  NumPy."""
  rng = np.random.default_rng(0)
  e, f, d = 4, 12, 16
  flat = {
      "model.layers.0.mlp.experts.fc1.weight": ((e, d, 2 * f), (1,)),
      "model.layers.0.mlp.experts.fc2.weight": ((e, d, d), (1,)),
      "model.layers.0.block_sparse_moe.input_linear.weight": ((e, 2 * f, d), (2,)),
      "model.layers.0.block_sparse_moe.output_linear.weight": ((e, d, f), (2,)),
  }
  grads = {k: rng.standard_normal(shape).astype(np.float32) for k, (shape, _) in flat.items()}
  nu = _nu_after_one_step(grads, blocks=BlockRules(weight_layout="torch"))
  for key, (_, averaged) in flat.items():
    np.testing.assert_allclose(nu[key], np.mean(grads[key].astype(np.float64) ** 2, axis=averaged),
                               rtol=1e-5, err_msg=key)


@pytest.mark.parametrize("d", [16, 24], ids=["2F == d", "2F != d"])
def test_transformers5_fused_experts_read_as_their_pair_says(d):
  """HF transformers 5 fuses each mixture's experts into experts/gate_up_proj
  and experts/down_proj, [E, 2F, d] and [E, d, F] applied as F.linear(x,
  w[e]) by default (Mixtral, Qwen3-MoE, DeepSeek-V3, ...), [E, d, 2F] and
  [E, F, d] applied as x @ w[e] where transposed (GPT-OSS, Llama 4). Every
  default-layout one was read as GPT-OSS's: each expert's outputs averaged,
  its inputs kept, silently (Qwen3-30B-A3B's gate_up_proj [128, 1536,
  2048] gave v [128, 2048]; with 2F == d no shape check could tell). The
  pair settles it; without a gate (Nemotron-H's up_proj, Ergo's
  transposed one) the router's input width does. v against float64 NumPy:
  one per expert and output neuron."""
  rng = np.random.default_rng(0)
  e, f = 4, 8
  flat = {  # name: (shape, the axis each expert's outputs are averaged over)
      "mixtral.layers.0.mlp.experts.gate_up_proj": ((e, 2 * f, d), 2),
      "mixtral.layers.0.mlp.experts.down_proj": ((e, d, f), 2),
      "gpt_oss.layers.0.mlp.experts.gate_up_proj": ((e, d, 2 * f), 1),
      "gpt_oss.layers.0.mlp.experts.down_proj": ((e, f, d), 1),
      "nemotron_h.layers.1.mixer.experts.up_proj": ((e, f, d), 2),
      "nemotron_h.layers.1.mixer.experts.down_proj": ((e, d, f), 2),
      "nemotron_h.layers.1.mixer.gate.weight": ((e, d), 1),
      "ergo.layers.1.mlp.experts.up_proj": ((e, d, f), 1),
      "ergo.layers.1.mlp.experts.down_proj": ((e, f, d), 1),
      "ergo.layers.1.mlp.gate.linear.weight": ((e, d), 1),
  }
  grads = {k: rng.standard_normal(shape).astype(np.float32) for k, (shape, _) in flat.items()}
  nu = _nu_after_one_step(grads, blocks=BlockRules(weight_layout="torch"))
  for key, (_, averaged) in flat.items():
    np.testing.assert_allclose(nu[key], np.mean(grads[key].astype(np.float64) ** 2, axis=averaged),
                               rtol=1e-5, err_msg=key)


def test_transformers5_fused_experts_the_tree_cannot_settle_raise():
  """A fused expert weight whose siblings cannot say its layout (a tree
  with gate_up_proj alone, shapes that fit neither pairing, a gateless pair
  without its router) raises, naming the leaf and the rule for each
  layout; the rule settles it."""
  e, f, d = 4, 8, 16
  cases = (
      {"mlp.experts.gate_up_proj": (e, 2 * f, d)},
      {"mlp.experts.gate_up_proj": (e, 2 * f, d), "mlp.experts.down_proj": (e, f, d + 1)},
      {"mlp.experts.up_proj": (e, f, d), "mlp.experts.down_proj": (e, d, f)},
  )
  for flat in cases:
    tree = {k: jnp.zeros(shape) for k, shape in flat.items()}
    with pytest.raises(ValueError, match=r"experts.*\[experts, out, in\].*layout='e \(p o\) i'|"
                                         r"experts.*\[experts, out, in\].*layout='e o i'"):
      optax_mini.explain(tree, blocks=BlockRules(weight_layout="torch"))
  # One leaf alone, as block_spec_for reads it, has no siblings to say.
  with pytest.raises(ValueError, match=r"experts.*\[experts, out, in\]"):
    optax_mini.block_spec_for(("model", "layers", "0", "mlp", "experts", "gate_up_proj"),
                              jnp.zeros((e, 2 * f, d)), blocks=BlockRules(weight_layout="torch"))
  rules = BlockRules(weight_layout="torch", rules=[
      optax_mini.Rule("experts/gate_up_proj", "gate,up", layout="e (p o) i")])
  report = optax_mini.explain({"mlp.experts.gate_up_proj": jnp.zeros((e, 2 * f, d))}, blocks=rules)
  assert report.rows[0].v_shape == (e, 2 * f)


def test_transformers5_and_4_trees_of_one_mixtral_get_the_same_blocks():
  """The same Mixtral as transformers 4 keeps it (one nn.Linear [out, in]
  per expert, as its checkpoints on the Hub) and as transformers 5 does
  (fused [E, 2F, d] and [E, d, F]): the same number of v, counted from the
  config (one per expert and output neuron)."""
  e, f, d, layers = 8, 24, 16, 2
  v4, v5 = {}, {}
  for layer in range(layers):
    p = f"model.layers.{layer}.block_sparse_moe.experts."
    for x in range(e):
      v4 |= {f"{p}{x}.w1.weight": (f, d), f"{p}{x}.w3.weight": (f, d), f"{p}{x}.w2.weight": (d, f)}
    p = f"model.layers.{layer}.mlp.experts."
    v5 |= {p + "gate_up_proj": (e, 2 * f, d), p + "down_proj": (e, d, f)}
  expected = layers * e * (2 * f + d)
  for flat in (v4, v5):
    tree = {k: jax.ShapeDtypeStruct(shape, jnp.float32) for k, shape in flat.items()}
    assert optax_mini.explain(tree, blocks=BlockRules(weight_layout="torch")).num_v == expected


def test_pytorch_patch_embedding_convolutions_are_no_tables():
  """CLIP's, SigLIP's and Idefics3's vision embeddings keep their patch
  convolution as embeddings/patch_embedding/weight [d, 3, p, p] (Qwen2-VL's
  patch_embed/proj/weight [d, 3, t, p, p]): under an embedding's name it was
  read as a table and raised (its vocabulary axis not 4x the others), in
  every such PyTorch tree. One v per output channel, as the official per-row
  rule gives it, against float64 NumPy; the position table beside it stays
  one v per position."""
  rng = np.random.default_rng(0)
  flat = {
      "vision_model.embeddings.patch_embedding.weight": ((32, 3, 16, 16), (1, 2, 3)),
      "visual.patch_embed.proj.weight": ((32, 3, 2, 14, 14), (1, 2, 3, 4)),
      "vision_model.embeddings.position_embedding.weight": ((197, 32), (1,)),
  }
  grads = {k: rng.standard_normal(shape).astype(np.float32) for k, (shape, _) in flat.items()}
  nu = _nu_after_one_step(grads, blocks=BlockRules(weight_layout="torch"))
  for key, (_, averaged) in flat.items():
    np.testing.assert_allclose(nu[key], np.mean(grads[key].astype(np.float64) ** 2, axis=averaged),
                               rtol=1e-5, err_msg=key)


def test_gpt2_c_proj_is_laid_out_as_the_c_attn_beside_it():
  """GPTBigCode (StarCoder) keeps GPT-2's names on nn.Linear weights [out,
  in]: its square attention c_proj was read as GPT-2's Conv1D [in, out] (one
  v per input neuron). c_proj takes the orientation of the c_attn beside it
  (its output the wider axis): GPT-2's Conv1D [d, 3d], StarCoder's Linear
  [d + 2 head_dim, d]. v against float64 NumPy, one per output neuron."""
  rng = np.random.default_rng(0)
  d, hd = 16, 4
  cases = (
      ((d, 3 * d), 0, BlockRules(weight_layout="torch")),  # GPT-2: Conv1D [in, out]
      ((d + 2 * hd, d), 1, BlockRules(weight_layout="torch", num_heads=d // hd, num_kv_heads=1, rules=[
          optax_mini.Rule("attn/c_attn", "q,k,v", layout="(p n h) i")])),  # StarCoder: Linear [out, in]
  )
  for c_attn, averaged, rules in cases:
    grads = {"transformer.h.0.attn.c_attn.weight": rng.standard_normal(c_attn).astype(np.float32),
             "transformer.h.0.attn.c_proj.weight": rng.standard_normal((d, d)).astype(np.float32)}
    nu = _nu_after_one_step(grads, head_dim=hd, blocks=rules)
    g = grads["transformer.h.0.attn.c_proj.weight"].astype(np.float64)
    np.testing.assert_allclose(nu["transformer.h.0.attn.c_proj.weight"], np.mean(g ** 2, axis=averaged),
                               rtol=1e-5)


# Keras' LoRA (EinsumDense / Dense / Conv / Embedding .enable_lora): A is the
# adapted kernel with its last axis the rank ("r"), B [rank, last]; the layer
# computes einsum(equation, x, A) @ B. keras-hub's equations: Gemma's
# query/value and attention output, Llama's (and MultiHeadAttention's) query
# and value, a Dense, a Conv2D patch embedding.
_KERAS_LORA_KERNELS = {
    ("decoder_block_0", "attention", "query"): "btd,ndh->btnh",
    ("decoder_block_0", "attention", "value"): "btd,kdh->btkh",
    ("decoder_block_0", "attention", "attention_output"): "btnh,nhd->btd",
    ("transformer_layer_0", "self_attention", "query"): "bqm,muh->bquh",
    ("transformer_layer_0", "self_attention", "value"): "bkm,mvh->bkvh",
    ("transformer_layer_0", "self_attention", "attention_output"): "bquh,uhm->bqm",
    ("image_encoder", "encoder_block_0", "query_proj"): "btd,de->bte",
    ("vit", "patch_embedding"): "bxyc,xycd->bd",
}


def test_keras_lora_factors_keep_their_heads():
  """backbone.enable_lora(rank) (keras-hub's Gemma / Llama recipe) names the
  factors lora_kernel_a / lora_kernel_b, which no LoRA rule matched: they
  took their module's query rule, A [heads, in, r] averaging the rank as a
  head_dim (one v per head) and B [r, head_dim] read as a flat query (one v
  for it all), or raised. Now A keeps every axis its einsum keeps (heads and
  rank), B one v per output, an Embedding's A one per token; with nothing,
  head_dim or the head counts passed alike. Against float64 NumPy."""
  sizes = {"b": 1, "t": 1, "q": 1, "k": 2, "d": 32, "m": 32, "n": 4, "u": 4, "v": 2, "h": 8,
           "e": 24, "x": 2, "y": 2, "c": 3, "r": 3}
  rng = np.random.default_rng(0)
  grads, kept = {}, {}
  for path, equation in _KERAS_LORA_KERNELS.items():
    inputs, out = equation.split("->")
    kernel = inputs.split(",")[1]
    for name, letters in (("lora_kernel_a", kernel[:-1] + "r"), ("lora_kernel_b", "r" + kernel[-1])):
      a_out = out.replace(kernel[-1], "r") if name == "lora_kernel_a" else kernel[-1]
      grads[(*path, name)] = rng.standard_normal([sizes[c] for c in letters]).astype(np.float32)
      kept[(*path, name)] = tuple(i for i, c in enumerate(letters) if c in a_out)
  vocab = 50
  grads[("token_embedding", "lora_embeddings_a")] = rng.standard_normal((vocab, 3)).astype(np.float32)
  kept[("token_embedding", "lora_embeddings_a")] = (0,)  # one v per token, as its table
  grads[("token_embedding", "lora_embeddings_b")] = rng.standard_normal((3, 32)).astype(np.float32)
  kept[("token_embedding", "lora_embeddings_b")] = (1,)

  def nest(flat):
    tree = {}
    for path, value in flat.items():
      node = tree
      for c in path[:-1]:
        node = node.setdefault(c, {})
      node[path[-1]] = value
    return tree

  for kwargs in ({}, {"head_dim": 8}, {"blocks": BlockRules(num_heads=4, num_kv_heads=2)}):
    nu = _nu_after_one_step(nest(grads), **kwargs)
    for path, g in grads.items():
      node = nu
      for c in path:
        node = node[c]
      averaged = tuple(a for a in range(g.ndim) if a not in kept[path])
      np.testing.assert_allclose(node, np.mean(g.astype(np.float64) ** 2, axis=averaged), rtol=1e-5,
                                 err_msg=f"{'/'.join(path)} {kwargs}")
  # A query's A whose heads are as many as its inputs cannot say which is
  # which: it raises, naming the leaf.
  with pytest.raises(ValueError, match=r"query.*lora_kernel_a.*\(8, 8, 3\)"):
    optax_mini.block_specs({"attention": {"query": {"lora_kernel_a": leaf(8, 8, 3)}}})


def test_maxtext_lora_factors_of_a_scanned_decoder():
  """qwix's LoRA in MaxText (its SFT trainer: nnx.Optimizer(..., wrt=
  nnx.LoRAParam)) creates the factors inside the scanned decoder, stacked on
  its layer axis 1: kernel_lora_a [in, layers, r], kernel_lora_b [r, layers,
  out]. That tree holds no norm scale to give the stack away, and each A had
  its layers averaged into its inputs, silently: it raises now, naming the
  stack. Declared, every factor is one v per layer and output; the experts'
  wo_lora_a [E, layers, H, r] ("BSEH,EHM->BSEM": one A per expert) keeps
  its experts (they were averaged). Against float64 NumPy."""
  layers, d, r, nh, e, h = 3, 64, 4, 128, 4, 32
  shapes = {
      ("self_attention", "query", "kernel_lora_a"): ((d, layers, r), (1, 2)),
      ("self_attention", "query", "kernel_lora_b"): ((r, layers, nh), (1, 2)),
      ("self_attention", "out", "kernel_lora_a"): ((nh, layers, r), (1, 2)),
      ("self_attention", "out", "kernel_lora_b"): ((r, layers, d), (1, 2)),
      ("moe_block", "wi_0_lora_a"): ((d, layers, r), (1, 2)),
      ("moe_block", "wi_0_lora_b"): ((r, layers, e, h), (1, 2, 3)),
      ("moe_block", "wo_lora_a"): ((e, layers, h, r), (0, 1, 3)),
      ("moe_block", "wo_lora_b"): ((r, layers, d), (1, 2)),
  }
  rng = np.random.default_rng(0)
  grads = {"decoder": {"layers": {}}}
  for path, (shape, _) in shapes.items():
    node = grads["decoder"]["layers"]
    for c in path[:-1]:
      node = node.setdefault(c, {})
    node[path[-1]] = rng.standard_normal(shape).astype(np.float32)
  with pytest.raises(ValueError, match=r"LoRA factors under 'decoder/layers'.*stacked=\{'decoder/layers': 1\}"):
    optax_mini.block_specs(grads)
  nu = _nu_after_one_step(grads, blocks=BlockRules(stacked={"decoder/layers": 1}))
  for path, (shape, kept) in shapes.items():
    g, v = grads["decoder"]["layers"], nu["decoder"]["layers"]
    for c in path:
      g, v = g[c], v[c]
    averaged = tuple(a for a in range(len(shape)) if a not in kept)
    np.testing.assert_allclose(v, np.mean(g.astype(np.float64) ** 2, axis=averaged), rtol=1e-5,
                               err_msg="/".join(path))
  # Unrolled layers (tunix: layers/0/...) hold no stack: the same factors
  # without the layer axis read as one layer's.
  unrolled = {"layers": {"0": {"self_attention": {"out": {"kernel_lora_a": leaf(16, 8, r),
                                                          "kernel_lora_b": leaf(r, 8, d)}}}}}
  got = v_shapes(unrolled)["layers"]["0"]["self_attention"]["out"]
  assert got == {"kernel_lora_a": (r,), "kernel_lora_b": (8, d)}


def test_quax_lora_factors_are_one_v_per_row():
  """quax's LoRA for Equinox (quax.examples.lora: a LoraArray in place of a
  Linear's weight [out, in], children _w, a [out, rank], b [rank, in], W + a
  @ b) had b taken for Haiku's bias (plain Adam, never decayed) and a read
  as a Flax [in, out] kernel, its outputs averaged. Each factor's rows are
  its outputs: one v per row, with or without weight_layout='torch', the
  frozen _w (zero gradients) needing no head_dim under a query. Against
  float64 NumPy."""
  rng = np.random.default_rng(0)
  out, rank, inp = 12, 3, 20
  grads = {"layers": {"0": {"self_attn": {"q_proj": {"weight": {
      "_w": rng.standard_normal((out, inp)), "a": rng.standard_normal((out, rank)),
      "b": rng.standard_normal((rank, inp))}}}}}}
  grads = jax.tree.map(lambda g: g.astype(np.float32), grads)
  weight = grads["layers"]["0"]["self_attn"]["q_proj"]["weight"]
  for rules in (None, BlockRules(weight_layout="torch")):
    nu = _nu_after_one_step(grads, blocks=rules)["layers"]["0"]["self_attn"]["q_proj"]["weight"]
    for name in ("_w", "a", "b"):
      np.testing.assert_allclose(nu[name], np.mean(weight[name].astype(np.float64) ** 2, axis=1),
                                 rtol=1e-5, err_msg=name)
  mask = optax_mini.default_weight_decay_mask(grads)["layers"]["0"]["self_attn"]["q_proj"]["weight"]
  assert mask["a"] and mask["b"]


def test_arrays_of_learned_vectors_get_one_v_per_vector():
  """Soft prompts (google-research/prompt-tuning: encoder/prompt/prompt/prompt
  [length, embed], one row per prepended token), scenic's AdaTape tape bank
  (tape_tokens [bank, dim]), Perceiver-style latents and a VQ codebook were
  read as [in, out] kernels: one v per feature, every learned vector
  averaged; [1, n, dim] query tokens (keras-hub BLIP-2's) and 4-D bottleneck
  tokens (scenic MTV's [1, frames, n, dim]) raised. One v per learned vector,
  as the official per-row reading of such a PyTorch parameter. A module of
  those names holds kernels: its leaves keep their kernel reading."""
  rng = np.random.default_rng(0)
  arrays = {
      ("encoder", "prompt", "prompt", "prompt"): (20, 48),
      ("TapeBank_0", "tape_tokens"): (30, 16),
      ("perceiver", "latents"): (12, 32),
      ("qformer", "query_tokens"): (1, 8, 32),
      ("mtv", "bottleneck"): (1, 3, 4, 16),
      ("vq", "codebook"): (64, 8),
  }
  grads = {}
  for path, shape in arrays.items():
    node = grads
    for c in path[:-1]:
      node = node.setdefault(c, {})
    node[path[-1]] = rng.standard_normal(shape).astype(np.float32)
  nu = _nu_after_one_step(grads)
  for path in arrays:
    g, v = grads, nu
    for c in path:
      g, v = g[c], v[c]
    np.testing.assert_allclose(v, np.mean(g.astype(np.float64) ** 2, axis=-1), rtol=1e-5,
                               err_msg="/".join(path))
  modules = {"attn": {"queries": {"kernel": leaf(16, 16)}}, "latents": {"kernel": leaf(16, 24)}}
  got = v_shapes(modules)
  assert got["attn"]["queries"]["kernel"] == (16,) and got["latents"]["kernel"] == (24,)
  # scenic's SAM, a port of PyTorch code: its mask decoder's learned tokens
  # are nn.Embed-like mask_tokens.weight [4, dim] (it raised asking for the
  # weight layout, and 'flax' averaged the four tokens): one v per token,
  # whichever layout is given.
  sam = {"mask_decoder": {"mask_tokens.weight": leaf(4, 32), "iou_token.weight": leaf(1, 32)}}
  for layout in (None, "torch", "flax"):
    got = v_shapes(sam, blocks=BlockRules(weight_layout=layout))["mask_decoder"]
    assert got == {"mask_tokens.weight": (4,), "iou_token.weight": (1,)}, layout


def test_a_convolution_weights_shape_settles_or_checks_its_orientation():
  """A 4-D parameter named weight whose two equal, small axes lead it is a
  Flax [kh, kw, in, out] kernel (flaxmodels' StyleGAN2 names its kernels
  so), whose last two is PyTorch's [out, in, kh, kw]. Undeclared, the
  shape settles it (it raised); declared against the shape, it raises (read
  so, v was kept along a spatial axis and the output channels averaged).
  A 3-to-3 channel [3, 3, 7, 7] still asks. v against float64 NumPy."""
  rng = np.random.default_rng(0)
  flax_conv, torch_conv = (3, 3, 16, 8), (8, 16, 3, 3)
  for shape, kept in ((flax_conv, 3), (torch_conv, 0)):
    g = {"conv": {"weight": rng.standard_normal(shape).astype(np.float32)}}
    nu = _nu_after_one_step(g)["conv"]["weight"]
    want = np.mean(g["conv"]["weight"].astype(np.float64) ** 2, axis=tuple(a for a in range(4) if a != kept))
    np.testing.assert_allclose(nu, want, rtol=1e-5)
  for shape, declared in ((flax_conv, "torch"), (torch_conv, "flax")):
    params = {"conv": {"weight": leaf(*shape)}}
    with pytest.raises(ValueError, match=r"spatial axis.*layout='(i i i o|o i i i)'"):
      optax_mini.block_specs(params, blocks=BlockRules(weight_layout=declared))
  # Its rule, as the error gives it, reads it as stored.
  spec = optax_mini.block_specs({"conv": {"weight": leaf(*flax_conv)}}, blocks=BlockRules(
      weight_layout="torch", rules=[optax_mini.Rule("conv/weight", "neuron", layout="i i i o")]))
  assert spec["conv"]["weight"].reduce_axes == (0, 1, 2)
  with pytest.raises(ValueError, match="laid out two ways"):
    optax_mini.block_specs({"conv": {"weight": leaf(3, 3, 7, 7)}})


def test_alphafold_names_a_module_above_layers_by_their_use():
  """AlphaFold 2 (Haiku): a module named *embed* above a layer made its
  kernels tables (template_embedding/.../embedding2d/weights [88, 64], one v
  per input row; a Haiku embed_proj/w the same); a module named *_bias
  above one made every kernel and norm under it a bias
  (msa_row_attention_with_pair_bias: plain Adam, never decayed); its
  biases output_b and gating_b [heads, head_dim] (beside output_w and
  gating_w) were kernels (gating_b's heads averaged, and decayed). A bias or
  table is now named by the leaf or its module, and <x>_b beside <x>_w is
  a bias. v against float64 NumPy; the decay mask by name."""
  rng = np.random.default_rng(0)
  attention = {"query_w": (32, 4, 8), "gating_w": (32, 4, 8), "gating_b": (4, 8),
               "output_w": (4, 8, 32), "output_b": (32,)}
  shapes = {
      "evoformer": {"msa_row_attention_with_pair_bias": {
          "attention": attention, "query_norm": {"scale": (32,), "offset": (32,)}}},
      "template_embedding": {"single_template_embedding": {"embedding2d": {"weights": (88, 64)}}},
      "embed_proj": {"w": (64, 128), "b": (128,)},
      "relative_attention_bias": {"embedding": (32, 4)},  # T5's: a bias, as the official code reads it
      "q_b": (16, 4, 8),  # no q_w beside it: a kernel
  }
  grads = jax.tree.map(lambda s: rng.standard_normal(s).astype(np.float32), shapes,
                       is_leaf=lambda x: isinstance(x, tuple))
  blocks = BlockRules(rules=[optax_mini.Rule("attention/query_w", "heads", layout="i n h"),
                             optax_mini.Rule("attention/gating_w", "value", layout="i n h"),
                             optax_mini.Rule("attention/output_w", "neuron"),
                             optax_mini.Rule("q_b", "neuron", layout="i o o")])
  nu = _nu_after_one_step(grads, blocks=blocks)
  sq = jax.tree.map(lambda g: g.astype(np.float64) ** 2, grads)
  att, att_sq = nu["evoformer"]["msa_row_attention_with_pair_bias"], sq["evoformer"]["msa_row_attention_with_pair_bias"]
  expected = {
      "query_w": att_sq["attention"]["query_w"].mean(axis=(0, 2)),  # per head
      "gating_w": att_sq["attention"]["gating_w"].mean(axis=0),
      "output_w": att_sq["attention"]["output_w"].mean(axis=(0, 1)),
      "gating_b": att_sq["attention"]["gating_b"],  # plain Adam
      "output_b": att_sq["attention"]["output_b"],
  }
  for name, want in expected.items():
    np.testing.assert_allclose(att["attention"][name], want, rtol=1e-5, err_msg=name)
  np.testing.assert_allclose(att["query_norm"]["scale"], att_sq["query_norm"]["scale"].mean(), rtol=1e-5)
  np.testing.assert_allclose(nu["template_embedding"]["single_template_embedding"]["embedding2d"]["weights"],
                             sq["template_embedding"]["single_template_embedding"]["embedding2d"]["weights"].mean(0),
                             rtol=1e-5)
  np.testing.assert_allclose(nu["embed_proj"]["w"], sq["embed_proj"]["w"].mean(0), rtol=1e-5)
  np.testing.assert_allclose(nu["relative_attention_bias"]["embedding"], sq["relative_attention_bias"]["embedding"],
                             rtol=1e-5)
  np.testing.assert_allclose(nu["q_b"], sq["q_b"].mean(0), rtol=1e-5)
  mask = optax_mini.default_weight_decay_mask(grads, blocks=blocks)
  assert mask["evoformer"]["msa_row_attention_with_pair_bias"]["attention"] == {
      "query_w": True, "gating_w": True, "output_w": True, "gating_b": False, "output_b": False}
  assert mask["relative_attention_bias"]["embedding"] is False and mask["q_b"] is True


def test_position_grids_filter_positions_and_sinks():
  """EasyDeL's Kimi-VL MoonViT patch_embed/pos_emb/kernel [dim, width,
  height] was read as a Dense kernel under an embedding (one v per height);
  Levanter's Hyena filter pos_emb/z [features, positions] as a table of
  features (the positions averaged). One v per position now; attention
  sinks, [heads] or Levanter's [kv_heads, q_per_group], one per tensor.
  Against float64 NumPy."""
  rng = np.random.default_rng(0)
  grads = {"patch_embed": {"pos_emb": {"kernel": rng.standard_normal((32, 8, 6)).astype(np.float32)}},
           "filter_fn": {"pos_emb": {"z": rng.standard_normal((3, 64)).astype(np.float32)}},
           "attn": {"sinks": rng.standard_normal((4, 2)).astype(np.float32)}}
  nu = _nu_after_one_step(grads)
  sq = jax.tree.map(lambda g: g.astype(np.float64) ** 2, grads)
  np.testing.assert_allclose(nu["patch_embed"]["pos_emb"]["kernel"], sq["patch_embed"]["pos_emb"]["kernel"].mean(0),
                             rtol=1e-5)
  np.testing.assert_allclose(nu["filter_fn"]["pos_emb"]["z"], sq["filter_fn"]["pos_emb"]["z"].mean(0), rtol=1e-5)
  np.testing.assert_allclose(nu["attn"]["sinks"], sq["attn"]["sinks"].mean(), rtol=1e-5)


def test_haiku_nets_and_alphafold3_layouts():
  """Haiku and AlphaFold 3, against their code: hk.nets.VectorQuantizer's
  codebook embeddings [dim, codes] was a table of dims (the codes
  averaged); hk.BatchNorm's scale [1, 1, 1, C] raised as an undeclared
  stack, whose advice averaged the classifier's classes; AlphaFold 3's
  pair_attention gating_query/weights is stored [out, in] (read [in, out]:
  each v averaged the gate's outputs), its adaptive norm's
  single_cond_bias/weights [in, out] is a Linear, not a bias (it was plain
  Adam, never decayed); its grid attention's query [heads, head_dim, in]
  (transpose_weights) raised. v against float64 NumPy; decay by name."""
  rng = np.random.default_rng(0)
  shapes = {
      "vqvae/~/vector_quantizer": {"embeddings": (8, 32)},
      "res_net/~/initial_batchnorm": {"scale": (1, 1, 1, 16), "offset": (1, 1, 1, 16)},
      "res_net/~/logits": {"w": (16, 10), "b": (10,)},
      "pairformer/pair_attention1/gating_query": {"weights": (12, 12)},
      "pairformer/pair_attention1/single_cond_bias": {"weights": (12, 24)},
      "pairformer/pair_attention1/q_projection": {"weights": (4, 8, 12)},  # [heads, head_dim, in]
  }
  grads = jax.tree.map(lambda s: rng.standard_normal(s).astype(np.float32), shapes,
                       is_leaf=lambda x: isinstance(x, tuple))
  nu = _nu_after_one_step(grads)
  sq = jax.tree.map(lambda g: g.astype(np.float64) ** 2, grads)
  np.testing.assert_allclose(nu["vqvae/~/vector_quantizer"]["embeddings"],
                             sq["vqvae/~/vector_quantizer"]["embeddings"].mean(0), rtol=1e-5)  # per code
  np.testing.assert_allclose(nu["res_net/~/initial_batchnorm"]["scale"],
                             sq["res_net/~/initial_batchnorm"]["scale"].mean(), rtol=1e-5)
  np.testing.assert_allclose(nu["res_net/~/logits"]["w"], sq["res_net/~/logits"]["w"].mean(0), rtol=1e-5)
  np.testing.assert_allclose(nu["pairformer/pair_attention1/gating_query"]["weights"],
                             sq["pairformer/pair_attention1/gating_query"]["weights"].mean(1), rtol=1e-5)
  np.testing.assert_allclose(nu["pairformer/pair_attention1/single_cond_bias"]["weights"],
                             sq["pairformer/pair_attention1/single_cond_bias"]["weights"].mean(0), rtol=1e-5)
  np.testing.assert_allclose(nu["pairformer/pair_attention1/q_projection"]["weights"],
                             sq["pairformer/pair_attention1/q_projection"]["weights"].mean((1, 2)), rtol=1e-5)
  mask = optax_mini.default_weight_decay_mask(grads)
  assert mask["pairformer/pair_attention1/single_cond_bias"]["weights"] is True
  assert mask["res_net/~/initial_batchnorm"] == {"scale": False, "offset": False}


def test_a_kernel_under_a_bias_named_module_and_haliax_leaf_names():
  """AlphaFold's msa_row_attention_with_pair_bias/feat_2d_weights [c_z,
  heads] projects the pair into a per-head bias: a kernel (it was plain
  Adam, never decayed). A haliax array is a child 0 of its parameter
  (Levanter's attention sinks/0): a rule for the parameter's name still
  claims it. An AlphaFold attention output_w with a layer axis nobody
  declared raises (its rule is for one layer's [heads, head_dim, out])."""
  rng = np.random.default_rng(0)
  grads = {"msa_row_attention_with_pair_bias": {"feat_2d_weights": rng.standard_normal((16, 8)).astype(np.float32)},
           "attn": {"sinks": {"0": rng.standard_normal((4, 2)).astype(np.float32)}}}
  nu = _nu_after_one_step(grads)
  sq = jax.tree.map(lambda g: g.astype(np.float64) ** 2, grads)
  np.testing.assert_allclose(nu["msa_row_attention_with_pair_bias"]["feat_2d_weights"],
                             sq["msa_row_attention_with_pair_bias"]["feat_2d_weights"].mean(0), rtol=1e-5)
  np.testing.assert_allclose(nu["attn"]["sinks"]["0"], sq["attn"]["sinks"]["0"].mean(), rtol=1e-5)
  assert optax_mini.default_weight_decay_mask(grads)["msa_row_attention_with_pair_bias"]["feat_2d_weights"] is True
  with pytest.raises(ValueError, match="attention/output_w"):
    optax_mini.block_specs({"evoformer_iteration": {"attention": {"output_w": leaf(4, 8, 8, 64)}}})
