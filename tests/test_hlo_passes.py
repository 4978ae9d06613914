"""The compiled update streams the parameters as few times as Adam-mini needs.

An optimizer update is memory-bound, so its speed is the number of
parameter-sized arrays it reads and writes. Counted in XLA's optimized HLO
(``benchmarks/hlo.py``), never timed: AdamW moves 10 words per parameter on
XLA:CPU (m: read g, m, write m; v: read g, v, write v; p: read p, m, v,
write p). Adam-mini needs 7: one read of g for the block sums, then m (3) and
p (3). A full-size temporary (such as a broadcast constant materialised next
to ``g`` for the sum, which an earlier version paid for: 7.33 words, and a
10 % slower update at 100M parameters) shows up here as more than 7.
"""

from __future__ import annotations

import math

import jax
import optax
import pytest

import optax_mini
from benchmarks import hlo, shapes

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu",
    reason="the pass counts are XLA:CPU's fusion decisions; other backends fuse differently",
)

TREE = shapes.LlamaShape("test", dim=64, n_layers=2, n_heads=4, vocab_size=1000)


def words_per_param(tx):
  params = shapes.param_shapes(TREE)
  state = jax.eval_shape(tx.init, params)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  text = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params).compile().as_text()
  sizes = {math.prod(x.shape) for x in jax.tree.leaves(params) if len(x.shape) >= 2}
  return hlo.count_passes(text, sizes, TREE.num_params).words_per_param


def test_adamw_moves_ten_words_per_parameter():
  # The counter's own check, on the reference optimizer.
  assert words_per_param(optax.adamw(1e-3, weight_decay=1e-4)) == pytest.approx(10.0, abs=0.02)


@pytest.mark.parametrize("mu_dtype", [None, "bfloat16"])
def test_adam_mini_moves_at_most_seven_words_per_parameter(mu_dtype):
  tx = optax_mini.adam_mini(1e-3, weight_decay=1e-4, head_dim=TREE.head_dim, mu_dtype=mu_dtype)
  # bf16 m moves fewer bytes but the same number of arrays.
  assert words_per_param(tx) <= 7.0 + 0.02
