"""``optax_mini.adam_mini`` on the parameter trees users actually have.

A plain HF-style dict, a Linen ``params`` dict (Dense, Embed, LayerNorm,
MultiHeadDotProductAttention), an NNX model under ``nnx.Optimizer``, a
dataclass pytree, and ``optax.chain(optax.clip_by_global_norm(1.0), ...)``.

The reference is a float64 NumPy Adam-mini written here from REFERENCE.md's
formula, with each leaf's blocks written out by hand (which axes of which view
are averaged): it does not call ``optax_mini``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optax_mini

MAX_RELATIVE_DIFFERENCE = 1e-5
HYPERPARAMS = dict(learning_rate=1e-2, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1)


# ---------------------------------------------------------------------------
# The float64 NumPy reference


@dataclasses.dataclass(frozen=True)
class RefBlocks:
  """One leaf's blocks, by hand: view the leaf as ``view``, average ``axes``.

  Not a registered pytree, so it is a leaf in a tree mirroring the params.
  """

  axes: tuple[int, ...]
  view: tuple[int, ...] | None = None
  decay: bool = True

  def v_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
    view = self.view or tuple(shape)
    return tuple(d for i, d in enumerate(view) if i not in self.axes)


def numpy_adam_mini(
    params: Any,
    grads_per_step: Sequence[Any],
    layout: Any,
    *,
    learning_rate: float,
    b1: float,
    b2: float,
    eps: float,
    weight_decay: float,
) -> tuple[list[Any], Any]:
  """REFERENCE.md's update in float64; returns (updates per step, params)."""
  leaves, treedef = jax.tree.flatten(params)
  blocks = treedef.flatten_up_to(layout)
  p = [np.asarray(x, np.float64) for x in leaves]
  m = [np.zeros_like(x) for x in p]
  v = [np.zeros(b.view or x.shape, np.float64).mean(axis=b.axes, keepdims=True) for b, x in zip(blocks, p)]
  all_updates = []
  for t, grads in enumerate(grads_per_step, start=1):
    step_updates = []
    for i, (g, b) in enumerate(zip(treedef.flatten_up_to(grads), blocks)):
      g = np.asarray(g, np.float64)
      view = b.view or g.shape
      m[i] = b1 * m[i] + (1 - b1) * g
      v[i] = b2 * v[i] + (1 - b2) * np.mean(g.reshape(view) ** 2, axis=b.axes, keepdims=True)
      m_hat = m[i] / (1 - b1**t)
      v_hat = v[i] / (1 - b2**t)
      adam = (m_hat.reshape(view) / (np.sqrt(v_hat) + eps)).reshape(g.shape)
      decay = weight_decay * p[i] if b.decay else 0.0
      u = -learning_rate * (adam + decay)
      p[i] = p[i] + u
      step_updates.append(u)
    all_updates.append(jax.tree.unflatten(treedef, step_updates))
  return all_updates, jax.tree.unflatten(treedef, p)


def expected_nu_shapes(params: Any, layout: Any) -> Any:
  return jax.tree.map(lambda x, b: b.v_shape(x.shape), params, layout)


def decay_mask(layout: Any) -> Any:
  return jax.tree.map(lambda b: b.decay, layout, is_leaf=lambda x: isinstance(x, RefBlocks))


def max_relative_difference(actual: Any, reference: Any) -> float:
  """max |a - r| / max |r| over each leaf, worst leaf."""
  worst = 0.0
  for a, r in zip(jax.tree.leaves(actual), jax.tree.leaves(reference), strict=True):
    a, r = np.asarray(a, np.float64), np.asarray(r, np.float64)
    assert a.shape == r.shape
    worst = max(worst, float(np.max(np.abs(a - r)) / np.max(np.abs(r))))
  return worst


def run_optimizer(
    tx: optax.GradientTransformation,
    params: Any,
    grad_fn: Callable[[Any, int], Any],
    steps: int = 3,
) -> tuple[list[Any], list[Any], Any, Any]:
  """(grads per step, updates per step, final params, final state)."""
  state = tx.init(params)
  update = jax.jit(tx.update)
  all_grads, all_updates = [], []
  for t in range(steps):
    grads = grad_fn(params, t)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    all_grads.append(grads)
    all_updates.append(updates)
  return all_grads, all_updates, params, state


def assert_matches_reference(params0, layout, grads, updates, final_params, **hyperparams):
  ref_updates, ref_params = numpy_adam_mini(params0, grads, layout, **hyperparams)
  for t, (ours, ref) in enumerate(zip(updates, ref_updates)):
    diff = max_relative_difference(ours, ref)
    assert diff <= MAX_RELATIVE_DIFFERENCE, f"step {t + 1}: updates differ by {diff:.2e}"
  diff = max_relative_difference(final_params, ref_params)
  assert diff <= MAX_RELATIVE_DIFFERENCE, f"final params differ by {diff:.2e}"


def random_like(tree: Any, seed: int, scales: Any = None) -> Any:
  """Normal noise shaped like ``tree``, each leaf with its own scale."""
  leaves, treedef = jax.tree.flatten(tree)
  rng = np.random.default_rng(seed)
  out = []
  for i, x in enumerate(leaves):
    # Rows/columns with different scales make per-block and per-element v differ.
    scale = rng.uniform(0.1, 3.0, size=x.shape[-1:] if x.ndim else ())
    out.append(jnp.asarray(rng.standard_normal(x.shape) * scale * (1 + i), x.dtype))
  return jax.tree.unflatten(treedef, out)


# ---------------------------------------------------------------------------
# (a) A plain HF-style dict (LLaMA with GQA and a q bias)

DIM, HEADS, KV_HEADS, HEAD_DIM, VOCAB, HIDDEN = 16, 4, 2, 4, 11, 24


def llama_dict(seed: int = 0, layers: int = 2) -> dict:
  rng = np.random.default_rng(seed)

  def w(*shape):
    return jnp.asarray(rng.standard_normal(shape) * 0.3, jnp.float32)

  return {
      "embed_tokens": {"embedding": w(VOCAB, DIM)},
      "layers": {
          str(i): {
              "self_attn": {
                  "q_proj": {"kernel": w(DIM, HEADS * HEAD_DIM), "bias": w(HEADS * HEAD_DIM)},
                  "k_proj": {"kernel": w(DIM, KV_HEADS * HEAD_DIM)},
                  "v_proj": {"kernel": w(DIM, KV_HEADS * HEAD_DIM)},
                  "o_proj": {"kernel": w(HEADS * HEAD_DIM, DIM)},
              },
              "mlp": {
                  "gate_proj": {"kernel": w(DIM, HIDDEN)},
                  "up_proj": {"kernel": w(DIM, HIDDEN)},
                  "down_proj": {"kernel": w(HIDDEN, DIM)},
              },
              "input_layernorm": {"scale": w(DIM)},
          }
          for i in range(layers)
      },
      "norm": {"scale": w(DIM)},
      "lm_head": {"kernel": w(DIM, VOCAB)},
  }


def llama_layout(layers: int = 2, value_as_one_block: bool = False) -> dict:
  # Flax kernels are [in, out]; flat q/k kernels are [in, heads*head_dim] with
  # heads as column blocks, viewed [in, heads, head_dim].
  value = RefBlocks(axes=(0, 1)) if value_as_one_block else RefBlocks(axes=(0,))
  return {
      "embed_tokens": {"embedding": RefBlocks(axes=(1,))},  # one per token
      "layers": {
          str(i): {
              "self_attn": {
                  "q_proj": {
                      "kernel": RefBlocks(axes=(0, 2), view=(DIM, HEADS, HEAD_DIM)),
                      "bias": RefBlocks(axes=(), decay=False),
                  },
                  "k_proj": {"kernel": RefBlocks(axes=(0, 2), view=(DIM, KV_HEADS, HEAD_DIM))},
                  "v_proj": {"kernel": value},
                  "o_proj": {"kernel": RefBlocks(axes=(0,))},
              },
              "mlp": {
                  "gate_proj": {"kernel": RefBlocks(axes=(0,))},
                  "up_proj": {"kernel": RefBlocks(axes=(0,))},
                  "down_proj": {"kernel": RefBlocks(axes=(0,))},
              },
              "input_layernorm": {"scale": RefBlocks(axes=(0,), decay=False)},
          }
          for i in range(layers)
      },
      "norm": {"scale": RefBlocks(axes=(0,), decay=False)},
      "lm_head": {"kernel": RefBlocks(axes=(0,))},  # one per vocabulary entry
  }


@pytest.mark.parametrize("value_as_one_block", [False, True])
def test_plain_dict_matches_numpy_reference(value_as_one_block):
  params = llama_dict()
  layout = llama_layout(value_as_one_block=value_as_one_block)
  blocks = optax_mini.BlockRules(value_as_one_block=True) if value_as_one_block else None
  tx = optax_mini.adam_mini(**HYPERPARAMS, head_dim=HEAD_DIM, blocks=blocks)
  grads, updates, final, state = run_optimizer(tx, params, lambda p, t: random_like(p, t))
  nu = state[0].nu
  assert jax.tree.map(jnp.shape, nu) == expected_nu_shapes(params, layout)
  assert nu["layers"]["1"]["self_attn"]["k_proj"]["kernel"].shape == (KV_HEADS,)
  assert_matches_reference(params, layout, grads, updates, final, **HYPERPARAMS)


# ---------------------------------------------------------------------------
# (b) A Linen params dict


class LinenModel(nn.Module):
  vocab: int = 13
  dim: int = 16
  heads: int = 4

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab, self.dim)(tokens)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=self.dim)(x)
    x = nn.LayerNorm()(x)
    x = nn.relu(nn.Dense(2 * self.dim)(x))
    return nn.Dense(self.vocab)(x)


def linen_layout() -> dict:
  attention = {
      # DenseGeneral kernels [in, heads, head_dim]: no head_dim needed.
      "query": {"kernel": RefBlocks(axes=(0, 2)), "bias": RefBlocks(axes=(), decay=False)},
      "key": {"kernel": RefBlocks(axes=(0, 2)), "bias": RefBlocks(axes=(), decay=False)},
      "value": {"kernel": RefBlocks(axes=(0,)), "bias": RefBlocks(axes=(), decay=False)},
      "out": {"kernel": RefBlocks(axes=(0, 1)), "bias": RefBlocks(axes=(), decay=False)},
  }
  return {
      "Embed_0": {"embedding": RefBlocks(axes=(1,))},
      "MultiHeadDotProductAttention_0": attention,
      "LayerNorm_0": {"scale": RefBlocks(axes=(0,), decay=False), "bias": RefBlocks(axes=(), decay=False)},
      "Dense_0": {"kernel": RefBlocks(axes=(0,)), "bias": RefBlocks(axes=(), decay=False)},
      "Dense_1": {"kernel": RefBlocks(axes=(0,)), "bias": RefBlocks(axes=(), decay=False)},
  }


def _linen_setup():
  model = LinenModel()
  tokens = jax.random.randint(jax.random.key(1), (4, 6), 0, 13)
  params = jax.jit(model.init)(jax.random.key(0), tokens)["params"]

  @jax.jit
  @jax.grad
  def grad(p, targets):
    logits = model.apply({"params": p}, tokens)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  def grad_fn(params, t):
    return grad(params, jax.random.randint(jax.random.key(100 + t), (4, 6), 0, 13))

  return params, grad_fn


def test_linen_params_dict_matches_numpy_reference():
  params, grad_fn = _linen_setup()
  layout = linen_layout()
  # An explicit "no decay on biases and norms" mask (the official rule); see
  # test_linen_default_mask_does_not_decay_attention_biases for the default.
  tx = optax_mini.adam_mini(**HYPERPARAMS, mask=decay_mask(layout))
  grads, updates, final, state = run_optimizer(tx, params, grad_fn)
  nu_shapes = jax.tree.map(jnp.shape, state[0].nu)
  attention = nu_shapes["MultiHeadDotProductAttention_0"]
  assert attention["query"]["kernel"] == (4,)  # [heads]
  assert attention["key"]["kernel"] == (4,)
  assert attention["value"]["kernel"] == (4, 4)  # [heads, head_dim]
  assert attention["out"]["kernel"] == (16,)  # [out]
  assert attention["query"]["bias"] == (4, 4)  # per element
  assert nu_shapes["Embed_0"]["embedding"] == (13,)  # [vocab]
  assert nu_shapes["Dense_0"]["kernel"] == (32,)
  assert nu_shapes["Dense_1"]["kernel"] == (13,)
  assert nu_shapes["LayerNorm_0"] == {"scale": (), "bias": (16,)}
  assert nu_shapes == expected_nu_shapes(params, layout)
  assert_matches_reference(params, layout, grads, updates, final, **HYPERPARAMS)


def test_linen_default_mask_does_not_decay_attention_biases():
  params, _ = _linen_setup()
  tx = optax_mini.adam_mini(learning_rate=1.0, weight_decay=0.5)
  attention = params["MultiHeadDotProductAttention_0"]
  attention["query"]["bias"] = jnp.ones_like(attention["query"]["bias"])  # init is 0
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  query_bias = updates["MultiHeadDotProductAttention_0"]["query"]["bias"]
  np.testing.assert_array_equal(query_bias, np.zeros_like(query_bias))


# ---------------------------------------------------------------------------
# (c) An NNX model under nnx.Optimizer


class NnxAttention(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.q_proj = nnx.Linear(DIM, HEADS * HEAD_DIM, use_bias=False, rngs=rngs)
    self.k_proj = nnx.Linear(DIM, KV_HEADS * HEAD_DIM, use_bias=False, rngs=rngs)
    self.v_proj = nnx.Linear(DIM, KV_HEADS * HEAD_DIM, use_bias=False, rngs=rngs)
    self.o_proj = nnx.Linear(HEADS * HEAD_DIM, DIM, use_bias=False, rngs=rngs)

  def __call__(self, x):
    batch, length, _ = x.shape
    q = self.q_proj(x).reshape(batch, length, HEADS, HEAD_DIM)
    k = self.k_proj(x).reshape(batch, length, KV_HEADS, HEAD_DIM)
    v = self.v_proj(x).reshape(batch, length, KV_HEADS, HEAD_DIM)
    k = jnp.repeat(k, HEADS // KV_HEADS, axis=2)
    v = jnp.repeat(v, HEADS // KV_HEADS, axis=2)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(HEAD_DIM)
    causal = jnp.tril(jnp.ones((length, length), bool))
    weights = jax.nn.softmax(jnp.where(causal, logits, -1e9), axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, -1)
    return self.o_proj(out)


class NnxModel(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.embed_tokens = nnx.Embed(VOCAB, DIM, rngs=rngs)
    self.self_attn = NnxAttention(rngs)
    self.norm = nnx.RMSNorm(DIM, rngs=rngs)
    self.lm_head = nnx.Linear(DIM, VOCAB, use_bias=False, rngs=rngs)

  def __call__(self, tokens):
    x = self.embed_tokens(tokens)
    x = x + self.self_attn(x)
    return self.lm_head(self.norm(x))


NNX_LAYOUT = {
    "embed_tokens": {"embedding": RefBlocks(axes=(1,))},
    "self_attn": {
        "q_proj": {"kernel": RefBlocks(axes=(0, 2), view=(DIM, HEADS, HEAD_DIM))},
        "k_proj": {"kernel": RefBlocks(axes=(0, 2), view=(DIM, KV_HEADS, HEAD_DIM))},
        "v_proj": {"kernel": RefBlocks(axes=(0,))},
        "o_proj": {"kernel": RefBlocks(axes=(0,))},
    },
    "norm": {"scale": RefBlocks(axes=(0,), decay=False)},
    "lm_head": {"kernel": RefBlocks(axes=(0,))},
}

_TOKENS = jax.random.randint(jax.random.key(7), (4, 8), 0, VOCAB)


def nnx_loss(model, tokens=_TOKENS):
  logits = model(tokens[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def test_nnx_optimizer_matches_plain_transform_and_reference():
  hyperparams = dict(HYPERPARAMS, learning_rate=3e-2)
  steps = 5
  tx = optax_mini.adam_mini(**hyperparams, head_dim=HEAD_DIM)

  # nnx.Optimizer: init sees nnx.State (paths end in `.value`), update sees arrays.
  model = NnxModel(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  expected = expected_nu_shapes(nnx.to_pure_dict(nnx.state(model, nnx.Param)), NNX_LAYOUT)
  assert jax.tree.map(jnp.shape, nnx.to_pure_dict(optimizer.opt_state[0].nu)) == expected

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(nnx_loss)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(train_step(model, optimizer)) for _ in range(steps)]
  assert losses[-1] < losses[0]
  assert float(nnx_loss(model)) < losses[0]
  assert jax.tree.map(jnp.shape, nnx.to_pure_dict(optimizer.opt_state[0].nu)) == expected
  assert int(optimizer.opt_state[0].count[...]) == steps

  # The same steps with plain tx.init/tx.update on the model's pure arrays.
  graphdef, state = nnx.split(NnxModel(nnx.Rngs(0)))
  params0 = nnx.to_pure_dict(state)

  grad = jax.jit(jax.grad(lambda p: nnx_loss(nnx.merge(graphdef, p))))

  def grad_fn(params, t):
    del t
    return grad(params)

  grads, updates, plain_final, plain_state = run_optimizer(tx, params0, grad_fn, steps)
  assert jax.tree.map(jnp.shape, plain_state[0].nu) == expected
  nnx_final = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  assert max_relative_difference(nnx_final, plain_final) <= 1e-6
  mu_close = jax.tree.map(
      lambda a, b: np.allclose(a, b, rtol=1e-5, atol=1e-6),
      nnx.to_pure_dict(optimizer.opt_state[0].mu),
      plain_state[0].mu,
  )
  assert all(jax.tree.leaves(mu_close))
  assert_matches_reference(params0, NNX_LAYOUT, grads, updates, plain_final, **hyperparams)


LORA_RANK = 4


class NnxLoraModel(NnxModel):
  """NnxModel with LoRA adapters on the query and output projections
  (``nnx.LoRALinear``: the base kernel plus ``lora/lora_a [in, rank]`` and
  ``lora/lora_b [rank, out]``), fine-tuned with ``wrt=nnx.LoRAParam``."""

  def __init__(self, rngs: nnx.Rngs):
    super().__init__(rngs)
    lora = dict(lora_rank=LORA_RANK, use_bias=False, rngs=rngs)
    self.self_attn.q_proj = nnx.LoRALinear(DIM, HEADS * HEAD_DIM, **lora)
    self.self_attn.o_proj = nnx.LoRALinear(HEADS * HEAD_DIM, DIM, **lora)
    for proj in (self.self_attn.q_proj, self.self_attn.o_proj):  # B starts at 0
      proj.lora.lora_b[...] = 0.1 * jax.random.normal(jax.random.key(3), proj.lora.lora_b.shape)


# A LoRA factor's blocks are its outputs: A's rank directions, B's outputs
# (the adapted layer's neurons), whatever layer it adapts: the query's A is no
# [in, heads*head_dim] kernel.
LORA_LAYOUT = {
    "self_attn": {
        name: {"lora": {"lora_a": RefBlocks(axes=(0,)), "lora_b": RefBlocks(axes=(0,))}}
        for name in ("q_proj", "o_proj")
    },
}


def test_nnx_lora_fine_tuning_matches_reference():
  hyperparams = dict(HYPERPARAMS, learning_rate=3e-2)
  steps = 4
  tx = optax_mini.adam_mini(**hyperparams, head_dim=HEAD_DIM)
  model = NnxLoraModel(nnx.Rngs(0))
  frozen = nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.LoRAParam)))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)
  lora0 = nnx.to_pure_dict(nnx.state(model, nnx.LoRAParam))
  expected = expected_nu_shapes(lora0, LORA_LAYOUT)
  assert expected["self_attn"]["q_proj"]["lora"] == {"lora_a": (LORA_RANK,), "lora_b": (HEADS * HEAD_DIM,)}
  assert jax.tree.map(jnp.shape, nnx.to_pure_dict(optimizer.opt_state[0].nu)) == expected

  @nnx.jit
  def train_step(model, optimizer):
    diff = nnx.DiffState(0, nnx.LoRAParam)
    loss, grads = nnx.value_and_grad(nnx_loss, argnums=diff)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(train_step(model, optimizer)) for _ in range(steps)]
  assert losses[-1] < losses[0]
  after = nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.LoRAParam)))
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, after, frozen)))  # base weights untouched

  # The same steps on the adapters' pure arrays, against the float64 reference.
  template = NnxLoraModel(nnx.Rngs(0))
  graphdef, lora_state, rest = nnx.split(template, nnx.LoRAParam, ...)
  grad = jax.jit(jax.grad(lambda p: nnx_loss(nnx.merge(graphdef, p, rest))))
  grads, updates, final, _ = run_optimizer(tx, nnx.to_pure_dict(lora_state), lambda p, t: grad(p), steps)
  assert max_relative_difference(nnx.to_pure_dict(nnx.state(model, nnx.LoRAParam)), final) <= 1e-6
  assert_matches_reference(lora0, LORA_LAYOUT, grads, updates, final, **hyperparams)


# ---------------------------------------------------------------------------
# (d) A dataclass pytree with HF module names as fields


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SelfAttention:
  q_proj: Any
  k_proj: Any
  v_proj: Any
  o_proj: Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Mlp:
  gate_proj: Any
  up_proj: Any
  down_proj: Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecoderLayer:
  self_attn: SelfAttention
  mlp: Mlp
  input_layernorm: Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Llama:
  embed_tokens: Any
  layers: list  # SequenceKey paths: layers/0/...
  norm: Any
  lm_head: Any


def dataclass_llama(leaf: Callable[..., Any], layers: int = 2) -> Llama:
  """A Llama with ``leaf(shape, kind)`` at every parameter."""
  return Llama(
      embed_tokens=leaf((VOCAB, DIM), RefBlocks(axes=(1,))),
      layers=[
          DecoderLayer(
              self_attn=SelfAttention(
                  q_proj=leaf((DIM, HEADS * HEAD_DIM), RefBlocks(axes=(0, 2), view=(DIM, HEADS, HEAD_DIM))),
                  k_proj=leaf((DIM, KV_HEADS * HEAD_DIM), RefBlocks(axes=(0, 2), view=(DIM, KV_HEADS, HEAD_DIM))),
                  v_proj=leaf((DIM, KV_HEADS * HEAD_DIM), RefBlocks(axes=(0,))),
                  o_proj=leaf((HEADS * HEAD_DIM, DIM), RefBlocks(axes=(0,))),
              ),
              mlp=Mlp(
                  gate_proj=leaf((DIM, HIDDEN), RefBlocks(axes=(0,))),
                  up_proj=leaf((DIM, HIDDEN), RefBlocks(axes=(0,))),
                  down_proj=leaf((HIDDEN, DIM), RefBlocks(axes=(0,))),
              ),
              input_layernorm=leaf((DIM,), RefBlocks(axes=(0,), decay=False)),
          )
          for _ in range(layers)
      ],
      norm=leaf((DIM,), RefBlocks(axes=(0,), decay=False)),
      lm_head=leaf((DIM, VOCAB), RefBlocks(axes=(0,))),
  )


def test_dataclass_pytree_matches_numpy_reference():
  rng = np.random.default_rng(3)
  params = dataclass_llama(lambda shape, _: jnp.asarray(rng.standard_normal(shape) * 0.3, jnp.float32))
  layout = dataclass_llama(lambda _, blocks: blocks)
  tx = optax_mini.adam_mini(**HYPERPARAMS, head_dim=HEAD_DIM)
  grads, updates, final, state = run_optimizer(tx, params, lambda p, t: random_like(p, 10 + t))
  nu = state[0].nu
  assert isinstance(nu, Llama) and isinstance(final, Llama)
  assert nu.layers[1].self_attn.q_proj.shape == (HEADS,)
  assert nu.layers[1].self_attn.k_proj.shape == (KV_HEADS,)
  assert nu.embed_tokens.shape == (VOCAB,)
  assert nu.layers[0].input_layernorm.shape == ()
  assert jax.tree.map(jnp.shape, nu) == expected_nu_shapes(params, layout)
  assert_matches_reference(params, layout, grads, updates, final, **HYPERPARAMS)


# ---------------------------------------------------------------------------
# (e) Inside optax.chain(optax.clip_by_global_norm(1.0), ...)


def clip_by_global_norm_by_hand(grads: Any, max_norm: float = 1.0) -> Any:
  leaves = [np.asarray(g, np.float64) for g in jax.tree.leaves(grads)]
  norm = np.sqrt(sum(np.sum(g**2) for g in leaves))
  factor = min(1.0, max_norm / norm)
  return jax.tree.map(lambda g: np.asarray(g, np.float64) * factor, grads)


def test_chain_with_clip_by_global_norm_matches_hand_clipped_reference():
  params = llama_dict(seed=5, layers=1)
  layout = llama_layout(layers=1)
  # Global norms far above, below and above 1: the clip factor changes from
  # step to step, so (Adam being scale-invariant) clipping shows in the result.
  norms = (80.0, 0.4, 6.0)

  def grad_fn(p, t):
    g = random_like(p, 20 + t)
    norm = np.sqrt(sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(g)))
    return jax.tree.map(lambda x: x * (norms[t] / norm), g)

  tx = optax.chain(
      optax.clip_by_global_norm(1.0),
      optax_mini.adam_mini(**HYPERPARAMS, head_dim=HEAD_DIM),
  )
  grads, updates, final, state = run_optimizer(tx, params, grad_fn)
  clipped = [clip_by_global_norm_by_hand(g) for g in grads]
  assert jax.tree.map(jnp.shape, state[1][0].nu) == expected_nu_shapes(params, layout)
  assert_matches_reference(params, layout, clipped, updates, final, **HYPERPARAMS)
  # The comparison can tell clipped from unclipped gradients.
  unclipped_updates, _ = numpy_adam_mini(params, grads, layout, **HYPERPARAMS)
  assert max_relative_difference(updates[-1], unclipped_updates[-1]) > 1e-2
