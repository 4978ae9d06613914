"""Bad input gets one clear ValueError naming the path, the shape and the fix."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_mini
from optax_mini import BlockRules, BlockSpec


def init(params, **kwargs):
  return optax_mini.adam_mini(1e-3, **kwargs).init(params)


def test_flat_qk_kernel_without_head_dim():
  params = {"layers": {"3": {"self_attn": {"k_proj": {"kernel": jnp.zeros((64, 32))}}}}}
  with pytest.raises(ValueError) as err:
    init(params)
  msg = str(err.value)
  assert "['layers']['3']['self_attn']['k_proj']['kernel']" in msg
  assert "(64, 32)" in msg
  assert "head_dim=" in msg  # the fix
  assert "blocks=" in msg  # the alternative fix


def test_a_haiku_query_without_head_dim_asks_for_the_models_head_size():
  # Haiku's MultiHeadAttention ``query/w [in, heads*key_size]``: the message
  # named the 3-D layout 'i n h' and suggested head_dim=0; later a divisor
  # that fits (head_dim=128 for HF CLIP's 768-wide kernels of 64-wide heads,
  # copied, averaged pairs of heads). It names no guessed size now; given
  # the head counts it says what they imply.
  params = {"transformer/layer_0/mha/query": {"w": jnp.zeros((96, 192))}}
  with pytest.raises(ValueError, match=r"laid out 'i \(n h\)'.*width over its attention heads") as err:
    init(params)
  assert "head_dim=64" not in str(err.value) and "head_dim=128" not in str(err.value)
  with pytest.raises(ValueError, match=r"With 3 heads this axis holds heads of 64\."):
    init(params, blocks=optax_mini.BlockRules(num_heads=3))
  # A fused q|k|v axis holds its parts too: no size from the head count.
  fused = {"h": {"0": {"attn": {"c_attn": {"kernel": jnp.zeros((64, 192))}}}}}
  with pytest.raises(ValueError, match="needs the head size") as err:
    init(fused, blocks=optax_mini.BlockRules(num_heads=4))
  assert "With 4 heads" not in str(err.value)


def test_a_flat_query_suggests_no_head_as_wide_as_its_axis():
  # quax's LoRA factor weight/a [out, rank] under q_proj (before its rule):
  # "e.g. head_dim=8", its rank, made the whole factor one v. No head size
  # below the axis divides 20: none is suggested.
  params = {"attn": {"q_proj": {"kernel": jnp.zeros((16, 20))}}}
  with pytest.raises(ValueError, match=r"head_dim=<size of one head>, .*a divisor of this 20-long axis") as err:
    init(params)
  assert "head_dim=20" not in str(err.value)


def test_head_dim_that_does_not_divide():
  params = {"attn": {"q_proj": {"kernel": jnp.zeros((16, 40))}}}
  with pytest.raises(ValueError) as err:
    init(params, head_dim=16)
  msg = str(err.value)
  assert "['attn']['q_proj']['kernel']" in msg and "(16, 40)" in msg
  assert "head_dim=16" in msg and "40" in msg


def test_head_dim_disagreeing_with_a_dense_general_kernel():
  params = {"attention": {"query": {"kernel": jnp.zeros((16, 4, 8))}}}
  with pytest.raises(ValueError, match=r"\['attention'\]\['query'\]\['kernel'\].*\(16, 4, 8\)"):
    init(params, head_dim=4)


def test_user_spec_that_does_not_fit_the_rank():
  params = {"mlp": {"fc1": {"kernel": jnp.zeros((8, 4))}}}
  with pytest.raises(ValueError) as err:
    init(params, blocks=BlockRules(rules=[("fc1", BlockSpec(reduce_axes=(2,)))]))
  msg = str(err.value)
  assert "mlp/fc1/kernel" in msg or "['mlp']['fc1']['kernel']" in msg
  assert "(8, 4)" in msg and "axis 2" in msg
  with pytest.raises(ValueError, match=r"\['w'\].*\(3,\).*axis 1"):
    init({"w": jnp.zeros(3)}, blocks={"w": BlockSpec(reduce_axes=(1,))})


def test_spec_averaging_a_stack_axis():
  params = {"layers": {"mlp": {"kernel": jnp.zeros((4, 8, 8))}}}
  rules = BlockRules(stacked={"layers": 0}, rules=[("layers/mlp", BlockSpec(reduce_axes=(0, 1)))])
  # reduce axes (0, 1) of one layer are leaf axes (1, 2): fine.
  assert init(params, blocks=rules)[0].nu["layers"]["mlp"]["kernel"].shape == (4,)
  with pytest.raises(ValueError, match="never averaged"):
    init(params, blocks={"layers": {"mlp": {"kernel": BlockSpec(reduce_axes=(0, 1), stack_axes=(0,))}}})


def test_spec_tree_with_the_wrong_structure():
  with pytest.raises(ValueError, match="one BlockSpec per parameter"):
    init({"a": jnp.zeros(3), "b": jnp.zeros(3)}, blocks={"a": BlockSpec()})


def test_bad_rule_target():
  with pytest.raises(ValueError, match="expected a BlockSpec, one of"):
    BlockRules(rules=[("q_proj", "per_head")])


def test_function_blocks_are_refused_with_the_reason():
  with pytest.raises(TypeError, match="inject_hyperparams"):
    optax_mini.scale_by_adam_mini(blocks=lambda path, leaf: BlockSpec())


def test_traced_head_dim_explains_static_args():
  params = {"q_proj": {"kernel": jnp.zeros((8, 8))}}
  tx = optax.inject_hyperparams(optax_mini.adam_mini)(learning_rate=1e-3, head_dim=4)
  with pytest.raises(ValueError, match=r"static_args=\('head_dim',\)"):
    tx.init(params)
  tx = optax.inject_hyperparams(optax_mini.adam_mini, static_args=("head_dim",))(learning_rate=1e-3, head_dim=4)
  assert tx.init(params).inner_state[0].nu["q_proj"]["kernel"].shape == (2,)


def test_state_from_another_partition_is_refused():
  params = {"q_proj": {"kernel": jnp.zeros((8, 8))}}
  state = init(params, head_dim=4)
  tx = optax_mini.adam_mini(1e-3, head_dim=2)
  with pytest.raises(ValueError, match=r"\['q_proj'\]\['kernel'\].*\(2,\).*\(4,\)"):
    tx.update(jax.tree.map(jnp.ones_like, params), state, params)


def test_gradient_tree_mismatch():
  params = {"a": jnp.zeros(3), "b": jnp.zeros(3)}
  state = init(params)
  with pytest.raises(ValueError, match="structure"):
    optax_mini.adam_mini(1e-3).update({"a": jnp.zeros(3)}, state, {"a": jnp.zeros(3)})


def test_integer_leaves_are_refused():
  with pytest.raises(ValueError, match=r"\['step'\].*int32"):
    init({"w": jnp.zeros((2, 2)), "step": jnp.zeros((), jnp.int32)})


def test_three_d_attention_kernel_of_unknown_layout_is_an_error_not_a_guess():
  # [512, 8, 64] could be [in, heads, head_dim] or heads-first [heads, in, head_dim].
  params = {"blocks_0": {"attn": {"query": {"kernel": jnp.zeros((512, 8, 64))}}}}
  with pytest.raises(ValueError) as err:
    init(params, head_dim=64)
  msg = str(err.value)
  assert "['blocks_0']['attn']['query']['kernel']" in msg and "(512, 8, 64)" in msg
  assert "'i n h'" in msg and "'n i h'" in msg  # what it could be
  assert "num_heads=" in msg and "layout=" in msg  # the two fixes


@pytest.mark.parametrize("shape, v_shape", [((512, 8, 64), (8,)), ((8, 512, 64), (8,))])
def test_head_counts_settle_the_layout(shape, v_shape):
  params = {"attn": {"query": {"kernel": jnp.zeros(shape)}, "value": {"kernel": jnp.zeros(shape)}}}
  state = init(params, head_dim=64, blocks=BlockRules(num_heads=8))
  assert state[0].nu["attn"]["query"]["kernel"].shape == v_shape  # one per head
  assert state[0].nu["attn"]["value"]["kernel"].shape == (8, 64)  # one per output neuron


def test_head_counts_that_contradict_a_kernel():
  params = {"self_attn": {"q_proj": {"kernel": jnp.zeros((64, 128))}}}  # 4 heads of 32
  with pytest.raises(ValueError, match=r"q_proj.*\(64, 128\).*4 heads, not num_heads/num_kv_heads \[8\]"):
    init(params, head_dim=32, blocks=BlockRules(num_heads=8))


def test_fused_qkv_with_unknown_part_sizes():
  params = {"attn": {"qkv_proj": {"kernel": jnp.zeros((64, 192))}}}
  with pytest.raises(ValueError, match=r"qkv_proj.*\(64, 192\).*unknown.*num_heads"):
    init(params, head_dim=16)
  # Multi-head: q, k and v take 64 columns each.
  state = init(params, head_dim=16, blocks=BlockRules(num_heads=4))
  assert state[0].nu["attn"]["qkv_proj"]["kernel"].shape == (192,)


@pytest.mark.parametrize(
    "rule, match",
    [
        (("my_qkv", "q,k,v"), "needs a layout"),
        (("my_qkv", "q,k,v", "i o"), "'p' \\(parts\\) axis"),
        (("q_proj", "heads", "i (n h"), "unclosed"),
        (("q_proj", "heads", "i x"), "letters"),
        (("q_proj", "heads", "i (n h)", "n h > "), "terms"),
        (("my_qkv", "q,k,x", "i (p n h)"), "fused parts from"),
    ],
)
def test_bad_layout_rules(rule, match):
  with pytest.raises(ValueError, match=match):
    BlockRules(rules=[rule])


def test_bad_head_counts():
  with pytest.raises(ValueError, match="num_heads must be a positive int"):
    BlockRules(num_heads=0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"b2": 1.5}, ValueError, r"b2=1.5 is out of range.*\[0.0, 1.0\)"),
        ({"b1": -0.1}, ValueError, r"b1=-0.1 is out of range"),
        ({"b1": float("nan")}, ValueError, r"b1=nan is out of range"),
        ({"eps": -1e-8}, ValueError, r"eps=-1e-08 is out of range.*>= 0"),
        ({"eps_root": -1.0}, ValueError, r"eps_root=-1.0"),
        ({"weight_decay": -0.1}, ValueError, r"weight_decay=-0.1"),
        ({"learning_rate": "1e-3"}, TypeError, r"learning_rate must be a real number.*schedule.*got '1e-3' of type str"),
        ({"learning_rate": None}, TypeError, r"learning_rate must be"),
        ({"b2": "0.999"}, TypeError, r"b2 must be a real number"),
        ({"mu_dtype": jnp.int16}, ValueError, r"mu_dtype=int16 is neither a floating-point dtype nor int8"),
        ({"mu_dtype": jnp.int8, "mu_code": "nf4"}, ValueError, r"mu_code=.nf4.: expected one of"),
        ({"mu_dtype": jnp.bool_}, ValueError, r"mu_dtype=bool"),
    ],
)
def test_bad_hyperparameters_are_refused_at_construction(kwargs, error, match):
  kwargs = {"learning_rate": 1e-3, **kwargs}
  with pytest.raises(error, match=match):
    optax_mini.adam_mini(**kwargs)


def test_good_hyperparameters_of_every_kind_are_accepted():
  optax_mini.adam_mini(optax.linear_schedule(1e-3, 0.0, 10), b1=0.0, b2=jnp.asarray(0.95), eps=0.0)
  optax_mini.adam_mini(jnp.asarray(1e-3), mu_dtype=jnp.bfloat16)
  optax_mini.scale_by_adam_mini(b1=0.9, b2=0.0)


def test_traced_hyperparameters_are_not_checked():
  # optax.inject_hyperparams traces them inside jit: no concrete value to check.
  params = {"w": jnp.ones((3, 4))}
  tx = optax.inject_hyperparams(optax_mini.adam_mini)(learning_rate=1e-3, b2=0.95)
  state = tx.init(params)
  updates, _ = jax.jit(tx.update)(params, state, params)
  assert jnp.all(jnp.isfinite(updates["w"]))


def test_gemma_gating_whose_shape_cannot_tell_gate_from_input():
  # [2, F, D] (Gemma 3) and [2, D, F] (Gemma 2) are told apart by F > D; a
  # square one cannot be, so it raises rather than guess.
  params = {"mlp": {"gating_einsum": jnp.zeros((2, 16, 16))}}
  with pytest.raises(ValueError, match=r"gating_einsum.*\(2, 16, 16\).*o > i"):
    init(params)


def test_a_3d_mlp_kernel_that_is_no_experts_raises():
  # MaxText's fused_mlp kernel is [embed, gate|up, mlp]: read as [experts,
  # in, out] it would have 2 inputs and 16 "experts". The experts check
  # (no more experts than inputs) refuses it, and the error says how to settle it.
  params = {"mlp": {"wi": {"kernel": jnp.zeros((16, 2, 32))}}}
  with pytest.raises(ValueError, match=r"wi.*\(16, 2, 32\).*'e <= i'.*Rule\("):
    init(params)
  rules = optax_mini.BlockRules(rules=[optax_mini.Rule("mlp/wi", "gate,up", "i p o")])
  state = optax_mini.scale_by_adam_mini(blocks=rules).init(params)
  assert state.nu["mlp"]["wi"]["kernel"].shape == (2, 32)


def _vmapped_nnx_layers(layers=4, dim=16, mlp=64):
  """An NNX model whose layers are built with ``nnx.vmap`` (for ``nnx.scan``):
  every leaf gets a leading layer axis, and nothing in the tree says so."""
  from flax import nnx

  class Layer(nnx.Module):
    def __init__(self, rngs):
      self.input_layernorm = nnx.RMSNorm(dim, rngs=rngs)
      self.gate_proj = nnx.Linear(dim, mlp, use_bias=False, rngs=rngs)
      self.down_proj = nnx.Linear(mlp, dim, use_bias=False, rngs=rngs)

  @nnx.split_rngs(splits=layers)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def make(rngs):
    return Layer(rngs)

  return {"layers": nnx.state(make(nnx.Rngs(0)), nnx.Param)}


def test_an_undeclared_layer_stack_raises():
  """Unstacked, the MLP kernels [layers, in, out] would get one v per output
  neuron across all layers, silently. A norm scale with a layer axis gives
  the stack away: the error names it and the fix."""
  params = _vmapped_nnx_layers()
  with pytest.raises(ValueError, match=r"\['layers'\]\['input_layernorm'\]\['scale'\].*\(4, 16\).*"
                     r"stack of layers.*stacked=\{'layers': 0\}"):
    init(params)
  # Declared, each layer's neurons get their own v.
  nu = init(params, blocks=BlockRules(stacked={"layers": 0}))[0].nu
  assert nu["layers"]["gate_proj"]["kernel"].shape == (4, 64)
  assert nu["layers"]["input_layernorm"]["scale"].shape == (4,)
  # A norm that really has two feature axes: its own rule settles it.
  two_axes = {"norm": {"scale": jnp.ones((4, 16))}}
  assert init(two_axes, blocks=BlockRules(rules=[("norm/scale", "tensor")]))[0].nu["norm"]["scale"].shape == ()


def test_an_undeclared_equinox_stack_raises():
  """``eqx.filter_vmap``-built layers (stacked for ``lax.scan``), PyTorch
  layout: a [layers, out, in] weight read as [out, in, in] would keep the
  layer axis and average the neurons; the stacked norm raises first."""
  eqx = pytest.importorskip("equinox", reason="equinox is not installed (in the test extra)")

  class Layer(eqx.Module):
    norm: eqx.nn.RMSNorm
    up: eqx.nn.Linear

    def __init__(self, key):
      self.norm, self.up = eqx.nn.RMSNorm(16), eqx.nn.Linear(16, 64, use_bias=False, key=key)

  layers = eqx.filter_vmap(Layer)(jax.random.split(jax.random.key(0), 3))
  params = {"layers": eqx.filter(layers, eqx.is_inexact_array)}
  with pytest.raises(ValueError, match=r"norm.*\(3, 16\).*stack of layers"):
    init(params, blocks=BlockRules(weight_layout="torch"))
  nu = init(params, blocks=BlockRules(weight_layout="torch", stacked={"layers": 0}))[0].nu
  assert nu["layers"].up.weight.shape == (3, 64)


def test_head_dim_per_tower_leaves_the_rest_without_one():
  # A flat query kernel that no pattern of the mapping matches has no head
  # size: it raises, naming the leaf, instead of taking another tower's.
  params = {"vision": {"q_proj": {"kernel": jnp.zeros((16, 16))}},
            "text": {"q_proj": {"kernel": jnp.zeros((16, 32))}}}
  with pytest.raises(ValueError, match=r"\['text'\]\['q_proj'\]\['kernel'\].*head_dim="):
    init(params, head_dim={"vision": 4})
  tx = optax_mini.adam_mini(1e-3, head_dim={"vision": 8, "text": 4})
  state = tx.init(params)
  nu = state[0].nu
  assert (nu["text"]["q_proj"]["kernel"].shape, nu["vision"]["q_proj"]["kernel"].shape) == ((8,), (2,))


@pytest.mark.parametrize("head_dim", [{"": 4}, {3: 4}, {"vision": 0}, {"vision": "4"}])
def test_head_dim_mapping_that_is_not_one(head_dim):
  params = {"vision": {"q_proj": {"kernel": jnp.zeros((16, 16))}}}
  with pytest.raises(ValueError, match="head_dim"):
    init(params, head_dim=head_dim)


def test_a_stack_no_declared_pattern_matches_is_named():
  # MaxText's DeepSeek keeps its layers in decoder/dense_layers and
  # decoder/moe_layers ([in, layers, out]); a user who declares MaxText's
  # usual decoder/layers gets the error for the unmatched leaf, and a note
  # that no declared stack matched it.
  params = {"decoder": {"dense_layers": {"mlp": {"wi_0": {"kernel": jnp.zeros((64, 1, 96))}}},
                        "moe_layers": {"self_attention": {"out": {"kernel": jnp.zeros((4, 2, 16, 64))}}}}}
  with pytest.raises(ValueError, match=r"dense_layers.*none matches this leaf.*decoder/\*layers"):
    init(params, blocks=BlockRules(stacked={"decoder/layers": 1}))
  state = init(params, blocks=BlockRules(stacked={"decoder/*layers": 1}))
  nu = state[0].nu["decoder"]
  assert nu["dense_layers"]["mlp"]["wi_0"]["kernel"].shape == (1, 96)  # per layer, per neuron
  assert nu["moe_layers"]["self_attention"]["out"]["kernel"].shape == (2, 64)


def _dense_general_attention(name="to_q", dim=32, heads=4, head_dim=8):
  """A Flax Linen block with a DenseGeneral query projection under a name no
  rule knows: its kernel is [in, heads, head_dim]."""
  import flax.linen as nn

  class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
      q = nn.DenseGeneral(features=(heads, head_dim), use_bias=False, name=name)(x)
      return nn.DenseGeneral(features=dim, axis=(-2, -1), use_bias=False, name="to_out")(q)

  return Block().init(jax.random.key(0), jnp.zeros((1, 3, dim)))["params"]


def test_an_unknown_3d_kernel_that_may_hold_heads_is_an_error_not_a_guess():
  params = _dense_general_attention()
  assert params["to_q"]["kernel"].shape == (32, 4, 8)
  only_out = BlockRules(rules=[optax_mini.Rule("to_out/kernel", "neuron")])
  with pytest.raises(ValueError) as err:
    init(params, blocks=only_out)
  msg = str(err.value)
  assert "['to_q']['kernel']" in msg and "(32, 4, 8)" in msg
  assert "matched no rule" in msg and "not its largest" in msg
  assert "Rule('to_q/kernel', 'heads', layout='i n h')" in msg  # the fix, to copy
  # The rule the error gives: one v per head (4 heads, from the config above).
  rules = BlockRules(rules=[optax_mini.Rule("to_q/kernel", "heads", layout="i n h"),
                            optax_mini.Rule("to_out/kernel", "neuron")])
  nu = init(params, blocks=rules)[0].nu
  assert nu["to_q"]["kernel"].shape == (4,)
  assert nu["to_out"]["kernel"].shape == (32,)
  with pytest.raises(ValueError, match=r"\['to_q'\]\['kernel'\].*\(32, 4, 8\).*matched no rule"):
    optax_mini.explain(params, blocks=only_out)


@pytest.mark.parametrize(
    "shape, why",
    [
        # An attention output [heads, head_dim, out] under a name no rule
        # knows has the shape of a mixture's down projection [experts, ffn,
        # d] (jax-llm-examples' ffw.we_down), whose experts the default would
        # average: both raise.
        ((4, 8, 32), "no rule knows its name"),
        # [in, kv_heads, per_group, head_dim] (jax-llm-examples' Nemotron-3
        # ffw.q): the 4-D default would average its heads.
        ((32, 2, 4, 8), "not its largest"),
    ],
)
def test_unknown_kernels_whose_last_axis_is_the_largest_or_of_rank_4_raise(shape, why):
  params = {"ffw": {"w": jnp.zeros(shape)}}
  with pytest.raises(ValueError, match=rf"\['ffw'\]\['w'\].*{why}.*Rule\('ffw/w', 'heads', layout="):
    init(params)


@pytest.mark.parametrize(
    "params, leaf",
    [
        # Heads-first [heads, in, head_dim] (Gemma's einsum layout) under another name.
        ({"attn": {"wq_heads": jnp.zeros((4, 32, 8))}}, "wq_heads"),
        # A mixture's up projection [experts, in, out]: the last axis is the
        # largest, but under an experts' module the default would average experts.
        ({"moe_block": {"w_up": jnp.zeros((8, 32, 64))}}, "w_up"),
        # A PyTorch-layout weight [out, in, k]... read as [k, in, out] = [4, 32, 8].
        ({"proj": {"weight": jnp.zeros((8, 32, 4))}}, "weight"),
    ],
)
def test_other_unknown_3d_kernels_that_the_default_would_guess(params, leaf):
  blocks = BlockRules(weight_layout="torch") if leaf == "weight" else None
  with pytest.raises(ValueError, match=rf"\['{leaf}'\].*matched no rule.*Rule\("):
    init(params, blocks=blocks)


def test_the_rule_an_experts_error_suggests_keeps_each_experts_neurons():
  params = {"moe_block": {"w_up": jnp.zeros((8, 32, 64))}}
  rules = BlockRules(rules=[optax_mini.Rule("moe_block/w_up", "neuron", layout="e i o")])
  assert init(params, blocks=rules)[0].nu["moe_block"]["w_up"].shape == (8, 64)


def test_a_tree_without_names_keeps_the_default_reading():
  # optax's own test inputs: an unnamed list. No name says what its 3-D leaf
  # is, so it is read as every unnamed kernel is, one v per last-axis entry.
  state = init([jnp.ones((2, 3)), jnp.ones((2, 5, 2))])
  assert [x.shape for x in state[0].nu] == [(3,), (2,)]


def test_unknown_3d_kernels_whose_default_is_the_usual_reading_still_work():
  import flax.linen as nn

  # A 1-D convolution to one channel ([k, in, out] = [7, 32, 1], a vocoder's
  # last layer): named as a convolution, one v per output channel.
  conv = nn.Conv(features=1, kernel_size=(7,)).init(jax.random.key(0), jnp.zeros((1, 20, 32)))
  assert conv["params"]["kernel"].shape == (7, 32, 1)
  nu = init({"Conv_0": conv["params"]})[0].nu
  assert nu["Conv_0"]["kernel"].shape == (1,)
  # A widening [k, in, out] convolution under a convolution's name, and
  # PyTorch's [out, in, k] and [out, in, kh, kw] convolution weights: one v
  # per output channel.
  params = {"filt_conv": {"w": jnp.zeros((3, 16, 64))},
            "proj": {"weight": jnp.zeros((64, 16, 3))}, "stem": {"weight": jnp.zeros((64, 3, 7, 7))}}
  nu = init(params, blocks=BlockRules(weight_layout="torch"))[0].nu
  assert nu["filt_conv"]["w"].shape == (64,)
  assert nu["proj"]["weight"].shape == nu["stem"]["weight"].shape == (64,)
  # Keras convolutions under other names (EfficientNet's 1x1 se_expand,
  # DepthAnything's projection): a square window in front, [k, k, in, out].
  params = {"block1a_se_expand": {"kernel": jnp.zeros((1, 1, 2, 8))},
            "projection": {"kernel": jnp.zeros((3, 3, 16, 32))}}
  nu = init(params)[0].nu
  assert nu["block1a_se_expand"]["kernel"].shape == (8,) and nu["projection"]["kernel"].shape == (32,)


@pytest.mark.parametrize("params", [
    {"attn": {"w": jnp.zeros((8, 2, 32, 16))}},  # [kv_heads, per_group, in, head_dim]: no square window
    {"moe": {"w": jnp.zeros((2, 2, 32, 16))}},  # under an experts' module
])
def test_a_4d_kernel_that_is_no_square_window_or_sits_in_a_mixture_raises(params):
  with pytest.raises(ValueError, match=r"4-D kernel.*is a guess"):
    init(params)


def test_an_unknown_four_axis_kernel_error_offers_fused_parts_and_a_layer_stack():
  params = {"attn": {"my_kv": {"kernel": jnp.zeros((32, 2, 4, 8))}}}
  with pytest.raises(ValueError) as e:
    optax_mini.explain(params)
  message = str(e.value)
  assert "Rule('my_kv/kernel', 'k,v', layout='i p n h')" in message
  assert "BlockRules(stacked=" in message


@pytest.mark.parametrize("name,target", [("q_proj", "heads"), ("v_proj", "value")])
def test_a_stacked_attention_kernel_is_no_one_by_one_convolution(name, target):
  """A 4-D query/value kernel [layers, model, heads*head_dim]... that is not
  [1, 1, in, out] (AXLearn's q_proj [layers, model, heads, head_dim] with its
  stack undeclared, the norms sent to another optimizer) was read as a 1x1
  convolution: every layer and head in one v. It raises, naming the stack."""
  params = {"repeat": {"layer": {"attn": {name: {"kernel": jnp.zeros((3, 32, 4, 8))}}}}}
  with pytest.raises(ValueError, match=rf"({target}).*stacked=\{{'repeat/layer': 0\}}"):
    init(params, head_dim=8)
  # declared, it is one layer's [in, heads, head_dim]
  state = init(params, head_dim=8, blocks=BlockRules(stacked={"repeat/layer": 0}, num_heads=4))
  v = state[0].nu["repeat"]["layer"]["attn"][name]["kernel"]
  assert v.shape == ((3, 4) if target == "heads" else (3, 4, 8))


def test_an_axlearn_tree_without_its_norms_raises_for_its_undeclared_stack():
  """optax.multi_transform giving the norm scales to another optimizer left
  no [layers, d] scale to reveal AXLearn's repeated stack: its kernels were
  read as one layer's. Each is read by AXLearn's names now, so a stacked one
  fits no layout of its rank and raises."""
  import pathlib

  from tests.test_third_party_trees import load, rebuild

  record = load(pathlib.Path(__file__).parent / "third_party" / "trees" / "axlearn_fuji_7b_v2.json")
  tree = rebuild(record)
  del tree["decoder"]["output_norm"]
  layer = tree["decoder"]["transformer"]["repeat"]["layer"]
  del layer["feed_forward"]["norm"], layer["self_attention"]["norm"]
  with pytest.raises(ValueError, match=r"stacked=\{'repeat/layer': 0\}"):
    optax_mini.explain(tree, head_dim=128)
  # the attention alone, the rest masked out (optax.masked's MaskedNode)
  only = jax.tree_util.tree_map(lambda _: optax.MaskedNode(), tree)
  only["decoder"]["transformer"]["repeat"]["layer"]["self_attention"] = layer["self_attention"]
  with pytest.raises(ValueError, match=r"stacked=\{'repeat/layer': 0\}"):
    optax_mini.explain(only, head_dim=128)


def test_a_stacked_norm_whose_weight_is_named_kernel_is_an_undeclared_stack():
  """LWM's (EasyLM's LLaMA, scanned) RMSNorm names its weight ``kernel``:
  ``attention_norm/kernel [layers, d]`` was read as a kernel, one v per
  feature over every layer, silently. It reveals the stack, and that error
  comes first: before the query's, whose head counts would take the layer
  axis for the heads when layers == heads."""
  layers, d = 4, 32
  block = {"attention": {name: {"kernel": jnp.zeros((layers, d, d))} for name in ("wq", "wk", "wv", "wo")},
           "attention_norm": {"kernel": jnp.zeros((layers, d))}}
  params = {"transformer": {"h": {"scan_decoder": block}}}
  for blocks in (None, BlockRules(num_heads=layers)):
    with pytest.raises(ValueError, match=r"attention_norm.*stacked=\{'transformer/h/scan_decoder': 0\}"):
      init(params, head_dim=8, blocks=blocks)
  state = init(params, head_dim=8, blocks=BlockRules(stacked={"transformer/h": 0}))
  nu = state[0].nu["transformer"]["h"]["scan_decoder"]
  assert nu["attention_norm"]["kernel"].shape == (layers,)
  assert nu["attention"]["wq"]["kernel"].shape == (layers, d // 8)
  # a Dense inside an adaptive norm is no scale: one v per output
  ada = {"norm1": {"linear": {"kernel": jnp.zeros((d, 6 * d))}}}
  assert init(ada)[0].nu["norm1"]["linear"]["kernel"].shape == (6 * d,)


def test_an_error_suggests_a_haiku_linear_with_its_parent():
  """Haiku names its unnamed hk.Linear modules ``linear``, ``linear_1``:
  a suggested ``Rule('linear/w', ...)`` matched every one of them (the token
  table's one-hot projection included). The pattern keeps the parent."""
  params = {"transformer/~/layer/~/linear": {"w": jnp.zeros((3, 16, 4, 8))},
            "embed/~/linear": {"w": jnp.zeros((50, 16))}}
  with pytest.raises(ValueError, match=r"Rule\('layer/~/linear/w', ") as err:
    init(params)
  assert "Rule('linear/w'" not in str(err.value)


def test_a_table_of_three_axes_without_a_vocabulary_axis_raises():
  """[a, b, dim] with neither leading axis by far the largest: rows first (a
  per-layer table) or second (a tensor-parallel split) cannot be told."""
  params = {"token_embedding": {"embedding": jnp.zeros((4, 12, 8))}}
  with pytest.raises(ValueError, match=r"layout='i o i'"):
    init(params)
  rules = BlockRules(rules=[optax_mini.Rule("token_embedding/embedding", "token", layout="i o i")])
  assert init(params, blocks=rules)[0].nu["token_embedding"]["embedding"].shape == (12,)


def test_an_ambiguous_3d_attention_kernel_error_names_a_layer_stack():
  """WAN's scanned query [layers, d, d] with its norms sent elsewhere: the
  'i n h' or 'n i h' error offered head counts only, which take the layers
  for the heads when there are as many (WAN 2.1-14B: 40 and 40)."""
  params = {"blocks": {"attn1": {"query": {"kernel": jnp.zeros((4, 32, 32))}}}}
  with pytest.raises(ValueError, match=r"declare the stack instead: BlockRules\(stacked=\{'blocks': 0\}\)"):
    init(params)


def test_a_query_whose_heads_would_be_as_wide_as_its_input_raises():
  """LWM's scanned wq [layers, d, d] with its norms sent elsewhere and only
  the head counts given (layers == heads): 'n i h' was the one fit, heads of
  d each, so every head's v averaged a whole layer's kernel, silently. Heads
  as wide as the input are taken for layers, unless head_dim says so."""
  layers, d = 4, 32
  params = {"transformer": {"h": {"attention": {
      "wq": {"kernel": jnp.zeros((layers, d, d))}, "wo": {"kernel": jnp.zeros((layers, d, d))}}}}}
  with pytest.raises(ValueError, match=r"heads of 32, the whole width.*"
                     r"stacked=\{'transformer/h': 0\}.*head_dim=32 to confirm"):
    init(params, blocks=BlockRules(num_heads=layers))
  # the head size given: the same leaf fits no layout, and the error names the stack
  with pytest.raises(ValueError, match=r"If its first axis is layers.*stacked=\{'transformer/h': 0\}"):
    init(params, head_dim=8)
  nu = init(params, head_dim=8, blocks=BlockRules(stacked={"transformer/h": 0}))[0].nu
  assert nu["transformer"]["h"]["attention"]["wq"]["kernel"].shape == (layers, d // 8)
  # heads as wide as the input, confirmed by head_dim: one v per head
  gemma = {"attn": {"q_einsum": {"w": jnp.zeros((2, d, d))}}}
  assert init(gemma, head_dim=d)[0].nu["attn"]["q_einsum"]["w"].shape == (2,)


def test_the_norm_rule_an_undeclared_stack_error_offers_matches_the_leaf():
  """xlstm-jax wraps its norms for tensor parallelism: ffn_norm/sharded/scale.
  The error offered Rule('ffn_norm/scale', 'tensor'), which matches no leaf
  (patterns are runs of whole components), and the same error came back."""
  params = {"block": {"ffn_norm": {"sharded": {"scale": jnp.zeros((2, 16))}}}}
  with pytest.raises(ValueError, match=r"rules=\[\('ffn_norm/sharded/scale', 'tensor'\)\]"):
    init(params)
  assert init(params, blocks=BlockRules(rules=[("ffn_norm/sharded/scale", "tensor")]))[0].nu[
      "block"]["ffn_norm"]["sharded"]["scale"].shape == ()


def test_an_unknown_3d_kernel_error_offers_a_block_diagonal_kernel_stored_output_first():
  """xlstm-jax's headwise gates [heads, 1, in / heads] (each head's output
  before its input): the error's options were the heads, experts [e, in,
  out] and 'neuron' (which averaged the heads, keeping the inputs). It names
  the block-diagonal layouts; the output-first one gives one v per head."""
  heads, per_head = 4, 24
  params = {"mlstm_cell": {"igate": {"kernel": jnp.zeros((heads, 1, per_head))}}}
  with pytest.raises(ValueError, match=r"block-diagonal.*\[blocks, out, in\]: layout='e o i'"):
    init(params)
  rules = BlockRules(rules=[optax_mini.Rule("igate/kernel", "neuron", layout="e o i")])
  tx = optax_mini.scale_by_adam_mini(b2=0.0, blocks=rules)
  g = jax.random.normal(jax.random.key(0), (heads, 1, per_head))
  _, state = tx.update({"mlstm_cell": {"igate": {"kernel": g}}}, tx.init(params))
  expected = np.mean(np.asarray(g, np.float64) ** 2, axis=2)  # one mean per head's output
  np.testing.assert_allclose(np.asarray(state.nu["mlstm_cell"]["igate"]["kernel"]), expected, rtol=1e-5)


def test_a_head_size_that_fits_one_tower_only_suggests_one_per_tower():
  """openpi's pi0: SigLIP's [1152, 16, 72] attention beside Gemma's heads of
  256. One head_dim raised on one tower or the other, and the error said
  only 'check head_dim'; it names the per-tower mapping."""
  params = {"img": {"attn": {"query": {"kernel": jnp.zeros((64, 4, 12))},
                             "out": {"kernel": jnp.zeros((4, 12, 64))}}},
            "llm": {"q_einsum": {"w": jnp.zeros((4, 64, 16))}}}
  with pytest.raises(ValueError, match=r"head_dim=\{'<its path pattern>': 12, '<the rest>': 16\}"):
    init(params, head_dim=16)
  nu = init(params, head_dim={"img": 12, "llm": 16})[0].nu
  assert nu["img"]["attn"]["query"]["kernel"].shape == (4,)
  assert nu["llm"]["q_einsum"]["w"].shape == (4,)


def test_falcons_grouped_query_key_value_error_gives_a_rule_that_holds():
  """HF's Falcon (PyTorch) query_key_value [(heads + 2 kv) * head_dim, d],
  grouped per key/value head (view(kv, heads / kv + 2, head_dim)): with the
  right head counts it still raised, the rule's multi-head size check
  failing, and the error said to check the head counts. It offers the rule
  without the check; followed, q and k get one v per head and v one per
  neuron, against float64 NumPy."""
  heads, kv, hd, d = 8, 2, 4, 32
  key = "transformer.h.0.self_attention.query_key_value.weight"
  w = np.random.default_rng(0).standard_normal(((heads + 2 * kv) * hd, d)).astype(np.float32)
  counts = dict(weight_layout="torch", num_heads=heads, num_kv_heads=kv)
  with pytest.raises(ValueError, match=r"Rule\('query_key_value/weight', 'q,k,v', layout='\(n p h\) i'\)"):
    init({key: w}, head_dim=hd, blocks=BlockRules(**counts))
  rules = BlockRules(**counts, rules=[optax_mini.Rule("query_key_value/weight", "q,k,v", layout="(n p h) i")])
  tx = optax_mini.scale_by_adam_mini(b2=0.0, head_dim=hd, blocks=rules)
  _, state = tx.update({key: jnp.asarray(w)}, tx.init({key: jnp.zeros_like(w)}))
  sq = (w.astype(np.float64) ** 2).reshape(kv, heads // kv + 2, hd, d)
  want = np.empty((kv, heads // kv + 2, hd))
  want[:, :-1] = sq[:, :-1].mean(axis=(2, 3))[..., None]  # each query head and the group's key
  want[:, -1] = sq[:, -1].mean(axis=-1)  # the group's value, per neuron
  np.testing.assert_allclose(np.asarray(state.nu[key]).reshape(want.shape), want, rtol=1e-5)


def test_an_unknown_array_of_learned_tokens_is_offered_the_token_reading():
  # scenic's objectvivit box_categories [1, 4, 1, 768]-like arrays: the 4-D
  # error offered no token reading (only 3-D [1, n, d] had it), and its
  # "[in..., out] kernel" option averaged the tokens. Followed, the offered
  # rule gives one v per token.
  params = {"mtv": {"learned": jnp.zeros((1, 3, 4, 16))}}
  with pytest.raises(ValueError, match=r"one v per token, Rule\('mtv/learned', 'token', layout='o o o i'\)"):
    init(params)
  rules = BlockRules(rules=[optax_mini.Rule("mtv/learned", "token", layout="o o o i")])
  state = optax_mini.scale_by_adam_mini(blocks=rules).init(params)
  assert state.nu["mtv"]["learned"].shape == (1, 3, 4)


def test_an_undeclared_haiku_layer_stack_is_named_by_its_stack():
  """AlphaFold's hk.layer_stack'ed evoformer_iteration holds sublayers, each
  with its norms: the undeclared-stack error named the sublayer
  (.../evoformer_iteration/msa_transition), one of nine to declare in turn.
  It names the stack, and declaring it settles every sublayer."""
  layers, c = 4, 16
  iteration = {sub: {"input_layer_norm": {"scale": jnp.ones((layers, c)), "offset": jnp.zeros((layers, c))},
                     "transition1": {"weights": jnp.zeros((layers, c, 4 * c)), "bias": jnp.zeros((layers, 4 * c))}}
               for sub in ("msa_transition", "pair_transition")}
  params = {"alphafold/alphafold_iteration/evoformer/evoformer_iteration": iteration}
  with pytest.raises(ValueError, match=r"stacked=\{'alphafold/alphafold_iteration/evoformer/evoformer_iteration': 0\}"):
    init(params)
  state = init(params, blocks=BlockRules(stacked={"evoformer/evoformer_iteration": 0}))
  nu = state[0].nu["alphafold/alphafold_iteration/evoformer/evoformer_iteration"]
  assert nu["msa_transition"]["transition1"]["weights"].shape == (layers, 4 * c)  # per layer, per neuron


def test_two_nested_layer_stacks_are_named_with_both_axes():
  """AlphaFold 3's diffusion transformer nests hk.layer_stack in
  hk.layer_stack ([super blocks, blocks, ...]): the hint declared axis 0
  only, which left its norm scales [blocks, features] one v per super
  block, the blocks averaged. It names both axes; declared so, each layer's
  kernel keeps its own v."""
  outer, inner, c = 3, 2, 16
  path = "diffuser/transformer/__layer_stack_with_per_layer/__layer_stack_with_per_layer"
  params = {f"{path}/adaptive_layernorm/layer_norm": {"scale": jnp.ones((outer, inner, c))},
            f"{path}/transition1": {"weights": jnp.zeros((outer, inner, c, 4 * c))}}
  with pytest.raises(ValueError, match=re.escape(f"stacked={{'{path}': (0, 1)}}")):
    init(params)
  state = init(params, blocks=BlockRules(stacked={path: (0, 1)}))
  assert state[0].nu[f"{path}/transition1"]["weights"].shape == (outer, inner, 4 * c)
  assert state[0].nu[f"{path}/adaptive_layernorm/layer_norm"]["scale"].shape == (outer, inner)
