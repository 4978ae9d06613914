"""6. Compile time of the update."""

from __future__ import annotations

import jax
import matplotlib
import optax

import optax_mini
from benchmarks import shapes as shapes_lib
from benchmarks.common import (
  Ratio,
  interleaved,
  log,
  ms,
  table,
)

matplotlib.use("Agg")


# --------------------------------------------------------------------------- 6. compile time


def section(quick: bool) -> str:
  config = shapes_lib.LlamaShape("32-layer", dim=256, n_layers=32, n_heads=4, vocab_size=8000)
  shapes = shapes_lib.param_shapes(config)
  pairs = 3 if quick else 20
  txs = {"adamw": optax.adamw(1e-3),
         "adam_mini": optax_mini.adam_mini(1e-3, head_dim=config.head_dim)}
  states = {k: jax.eval_shape(tx.init, shapes) for k, tx in txs.items()}

  def compile_once(name):
    def run():
      # A fresh function object and empty caches on every call, so nothing
      # traced or compiled before is reused (Adam-mini's per-leaf inner jits
      # included): the cost of the first compile in a process.
      jax.clear_caches()

      def step(params, state, grads):
        updates, state = txs[name].update(grads, state, params)
        return optax.apply_updates(params, updates), state

      return jax.jit(step, donate_argnums=(0, 1)).lower(shapes, states[name], shapes).compile()

    return run

  times = interleaved({k: compile_once(k) for k in txs}, pairs, warmup=1)
  ratio = Ratio.of(times["adam_mini"], times["adamw"])
  log(f"  compile: {ratio}")
  return "\n\n".join([
      "## 6. Compile time of the update (32-layer tree)",
      f"`jax.jit(update + apply_updates).lower(...).compile()` (trace, lower and XLA compile, "
      "after `jax.clear_caches()`) "
      f"of a {config.n_layers}-layer LLaMA tree ({len(jax.tree.leaves(shapes))} leaves), "
      f"{pairs} interleaved pairs after one warm-up pair.",
      table(["optimizer", "compile (median)"], [[k, ms(v)] for k, v in times.items()]),
      f"Adam-mini / AdamW = **{ratio}** (must stay <= 1.5x).",
  ])
