"""Properties of Adam-mini on random pytrees (hypothesis).

Each generated leaf carries its blocks written out by hand (a view shape and
the axes of that view averaged inside a block, from REFERENCE.md's Flax
table), so the properties that need the partition never ask optax_mini for it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import optax_mini  # noqa: E402
from optax_mini import BlockRules  # noqa: E402

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
STEPS = 3
SIZE = st.integers(1, 3)


class Case(NamedTuple):
  """One leaf: where it sits, its shape, and its blocks by hand."""

  path: tuple[str, ...]
  shape: tuple[int, ...]
  view: tuple[int, ...]  # the shape with a flat head axis split
  reduce: tuple[int, ...]  # axes of ``view`` inside one block


@st.composite
def leaf_cases(draw, head_dim):
  kind = draw(st.sampled_from(["mlp", "embed", "norm", "bias", "q_proj", "query", "conv", "scalar"]))
  a, b, c = draw(SIZE), draw(SIZE), draw(SIZE)
  if kind == "mlp":  # one block per output neuron
    return Case(("mlp", "kernel"), (a, b), (a, b), (0,))
  if kind == "embed":  # one block per token
    return Case(("embed_tokens", "embedding"), (a, b), (a, b), (1,))
  if kind == "norm":  # one block for the tensor
    return Case(("norm", "scale"), (a,), (a,), (0,))
  if kind == "bias":  # plain Adam
    shape = draw(st.sampled_from([(a,), (a, b)]))
    return Case(("attn", "bias"), shape, shape, ())
  if kind == "q_proj":  # flat [in, heads*head_dim]: one block per head
    return Case(("self_attn", "q_proj", "kernel"), (a, b * head_dim), (a, b, head_dim), (0, 2))
  if kind == "query":  # flax attention's DenseGeneral [in, heads, head_dim]
    return Case(("MultiHeadDotProductAttention_0", "query", "kernel"), (a, b, head_dim), (a, b, head_dim), (0, 2))
  if kind == "conv":  # unnamed kernel: one block per output channel
    return Case(("conv", "kernel"), (a, b, c), (a, b, c), (0, 1))
  return Case(("temperature",), (), (), ())  # a 0-d leaf: one block


@st.composite
def trees(draw, dtypes=(jnp.float32,)):
  """(params, cases, head_dim, seed): a dict tree of 1 to 4 random leaves."""
  head_dim = draw(st.integers(1, 3))
  cases = draw(st.lists(leaf_cases(head_dim), min_size=1, max_size=3))
  params, flat = {}, {}
  for i, case in enumerate(cases):
    dtype = draw(st.sampled_from(dtypes))
    node = params.setdefault(f"m{i}", {})
    for key in case.path[:-1]:
      node = node.setdefault(key, {})
    node[case.path[-1]] = jnp.zeros(case.shape, dtype)
    flat[(f"m{i}",) + case.path] = case
  seed = draw(st.integers(0, 2**31 - 1))
  return params, flat, head_dim, seed


def leaves_by_path(tree):
  return {tuple(k.key for k in path): x for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def random_grads(params, seed, steps=STEPS):
  rng = np.random.default_rng(seed)
  return [
      jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * rng.uniform(0.1, 3.0), p.dtype), params)
      for _ in range(steps)
  ]


def run(tx, params, grads, jit=False):
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  updates = []
  for g in grads:
    u, state = update(g, state, params)
    updates.append(u)
  return updates, state


def to_blocks(x, case):
  """[num_blocks, block_size]: each row one block, by the hand-written view."""
  x = np.asarray(x).reshape(case.view)
  kept = [a for a in range(x.ndim) if a not in case.reduce]
  x = np.transpose(x, kept + list(case.reduce))
  return x.reshape(int(np.prod([case.view[a] for a in kept])), -1)


def from_blocks(blocks, case):
  kept = [a for a in range(len(case.view)) if a not in case.reduce]
  order = kept + list(case.reduce)
  x = blocks.reshape([case.view[a] for a in order])
  return np.transpose(x, np.argsort(order)).reshape(case.shape)


def map_leaf(tree, path, fn):
  return jax.tree_util.tree_map_with_path(
      lambda p, x: fn(x) if tuple(k.key for k in p) == path else x, tree
  )


def assert_trees_close(actual, expected, rtol):
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    atol = rtol * float(np.max(np.abs(b), initial=0.0))  # m may nearly cancel
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


# ---------------------------------------------------------------------------


@SETTINGS
@given(trees(dtypes=(jnp.float32, jnp.bfloat16, jnp.float16)))
def test_updates_are_finite_and_keep_shape_and_dtype(tree):
  params, _, head_dim, seed = tree
  updates, state = run(optax_mini.adam_mini(1e-3, head_dim=head_dim), params, random_grads(params, seed), jit=True)
  for u in updates:
    for (path, x), p in zip(jax.tree_util.tree_leaves_with_path(u), jax.tree.leaves(params)):
      assert x.shape == p.shape and x.dtype == p.dtype, jax.tree_util.keystr(path)
      assert bool(jnp.all(jnp.isfinite(x))), jax.tree_util.keystr(path)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))


@SETTINGS
@given(trees())
def test_single_element_blocks_equal_optax_adamw(tree):
  params, _, _, seed = tree
  grads = random_grads(params, seed)
  mask = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)  # noqa: E731
  hyper = dict(learning_rate=1e-2, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.1, mask=mask)
  every_element = BlockRules(rules=[("*", "element")])
  mini, _ = run(optax_mini.adam_mini(**hyper, blocks=every_element), params, grads)
  adamw, _ = run(optax.adamw(**hyper), params, grads)
  for a, b in zip(mini, adamw):
    assert_trees_close(a, b, rtol=1e-5)


@SETTINGS
@given(trees(), st.data())
def test_scaling_a_blocks_gradients_leaves_its_update_unchanged(tree, data):
  # With eps = 0 the update m_hat / sqrt(v_hat) of a block is homogeneous of
  # degree 0 in that block's gradients: m scales by c, sqrt(v) by c, and the
  # bias corrections 1 - b^t are the same in both runs. (eps > 0 breaks it
  # for blocks with |g| near eps.) One block of every leaf gets its own c;
  # the other blocks must not see it.
  params, cases, head_dim, seed = tree
  scalings = {}
  for path, case in cases.items():
    num_blocks = to_blocks(np.zeros(case.shape), case).shape[0]
    block = data.draw(st.integers(0, num_blocks - 1))
    scalings[path] = (block, data.draw(st.sampled_from([1e-3, 0.37, 3.0, 1e3])))

  def scale_blocks(g):
    for path, (block, c) in scalings.items():

      def scale(x, case=cases[path], block=block, c=c):
        blocks = to_blocks(x, case).copy()
        blocks[block] *= c
        return jnp.asarray(from_blocks(blocks, case), x.dtype)

      g = map_leaf(g, path, scale)
    return g

  grads = random_grads(params, seed)
  tx = optax_mini.scale_by_adam_mini(eps=0.0, head_dim=head_dim)
  scaled = run(tx, params, [scale_blocks(g) for g in grads])[0]
  for a, b in zip(scaled, run(tx, params, grads)[0]):
    assert_trees_close(a, b, rtol=1e-5)


@SETTINGS
@given(trees(), st.integers(0, 2**31 - 1))
def test_permuting_within_blocks_permutes_the_update(tree, perm_seed):
  # Every block of every leaf gets its own random permutation.
  params, cases, head_dim, seed = tree
  rng = np.random.default_rng(perm_seed)
  perms = {}
  for path, case in cases.items():
    num_blocks, block_size = to_blocks(np.zeros(case.shape), case).shape
    perms[path] = np.stack([rng.permutation(block_size) for _ in range(num_blocks)])

  def permute(g):
    for path, perm in perms.items():

      def apply(x, case=cases[path], perm=perm):
        return jnp.asarray(from_blocks(np.take_along_axis(to_blocks(x, case), perm, axis=1), case), x.dtype)

      g = map_leaf(g, path, apply)
    return g

  grads = random_grads(params, seed)
  tx = optax_mini.scale_by_adam_mini(head_dim=head_dim)
  permuted = run(tx, params, [permute(g) for g in grads])[0]
  for a, b in zip(permuted, run(tx, params, grads)[0]):
    assert_trees_close(a, permute(b), rtol=1e-5)


@SETTINGS
@given(trees(dtypes=(jnp.float32, jnp.bfloat16)))
def test_jit_and_no_jit_agree(tree):
  params, _, head_dim, seed = tree
  tx = optax_mini.adam_mini(1e-2, head_dim=head_dim)
  grads = random_grads(params, seed, steps=2)
  jitted, jit_state = run(tx, params, grads, jit=True)
  eager, eager_state = run(tx, params, grads, jit=False)
  for a, b in zip(jitted, eager):
    assert jax.tree.map(lambda x: x.dtype, a) == jax.tree.map(lambda x: x.dtype, b)
    # bf16 updates are rounded once from float32: allow one bf16 ulp.
    rtol = 1e-2 if any(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(a)) else 1e-6
    assert_trees_close(a, b, rtol=rtol)
  assert_trees_close(jit_state[0].nu, eager_state[0].nu, rtol=1e-6)


@SETTINGS
@given(trees())
def test_number_of_v_entries_equals_explain_and_the_hand_count(tree):
  params, cases, head_dim, _ = tree
  state = optax_mini.adam_mini(1e-3, head_dim=head_dim).init(params)
  num_v = sum(x.size for x in jax.tree.leaves(state[0].nu))
  by_hand = sum(to_blocks(np.zeros(case.shape), case).shape[0] for case in cases.values())
  assert num_v == by_hand
  assert optax_mini.explain(params, head_dim=head_dim).num_v == by_hand
  # Leaf by leaf too: the nu of each leaf has one entry per hand-made block.
  nu = leaves_by_path(state[0].nu)
  for path, case in cases.items():
    assert nu[path].size == to_blocks(np.zeros(case.shape), case).shape[0], path


def fnmatch_run(pattern, components, reaching):
  """A rule pattern's meaning, written out: its ``/``-separated parts match,
  each by ``fnmatch``, a run of whole components ending at index
  ``reaching - 1`` or later."""
  import fnmatch

  parts = pattern.lower().strip("/").split("/")
  n = len(parts)
  return any(
      start + n >= reaching
      and all(fnmatch.fnmatchcase(components[start + i], parts[i]) for i in range(n))
      for start in range(len(components) - n + 1)
  )


PATTERN_CHARS = st.sampled_from(
    ["a", "b", "q", "_", "0", "1", ".", "-", "*", "?", "[0-9]", "[!a]", "[ab]", "[a-", "[",
     "]", "^", "$", "(", "\\", "\n", "x*y", "conv"])
COMPONENT = st.sampled_from(
    ["a", "b", "ab", "q_proj", "conv1", "conv", "0", "12", "", "x.y", "a\nb", "[0-9]", "b_a", "?",
     "a\x00b"])


@settings(max_examples=3000, deadline=None, derandomize=True)
@given(
    st.lists(st.lists(PATTERN_CHARS, max_size=3).map("".join), min_size=1, max_size=3).map("/".join),
    st.lists(COMPONENT, max_size=5).map(tuple),
    st.integers(-1, 6),
)
def test_a_rule_pattern_matches_as_fnmatch_does_component_by_component(pattern, components, reaching):
  # Rules are matched through one compiled regular expression per pattern
  # (a tree may have tens of thousands of leaves); it must mean what
  # fnmatch on each component means, character classes and regex
  # metacharacters in names included.
  from optax_mini import blocks

  assert blocks._pattern_matches(pattern, components, reaching) == fnmatch_run(
      pattern, components, reaching)
