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
from optax_mini import blocks

matplotlib.use("Agg")


# --------------------------------------------------------------------------- 6. compile time


def _fresh() -> None:
  """Empty every cache a first call in a new process would find empty: JAX's
  and the partition's (derived rules and compiled patterns)."""
  jax.clear_caches()
  blocks._flat_claims_from_rules.cache_clear()
  blocks._pattern_regex.cache_clear()


def _compile_runs(txs, tree, states, fresh) -> dict:
  """For each optimizer, a run that traces, lowers and compiles its update
  step: a fresh function object and, by ``fresh``, empty caches on every
  call, so nothing traced or compiled before is reused (Adam-mini's per-leaf
  inner jits included): the cost of the first compile in a process."""

  def compile_once(name):
    def run():
      fresh()

      def step(params, state, grads):
        updates, state = txs[name].update(grads, state, params)
        return optax.apply_updates(params, updates), state

      return jax.jit(step, donate_argnums=(0, 1)).lower(tree, states[name], tree).compile()

    return run

  return {name: compile_once(name) for name in txs}


def many_leaves(quick: bool) -> str:
  """Setting up on a tree of many leaves: a PyTorch MoE checkpoint, one
  Linear per expert."""
  full = shapes_lib.TorchMoeShape()
  small = shapes_lib.TorchMoeShape("8 layers of 64 experts", dim=256, n_layers=8, n_experts=64,
                                   n_heads=4, n_kv_heads=2, head_dim=64, moe_dim=64,
                                   vocab_size=1000)
  pairs = 1 if quick else 3
  rows = []
  for config, compile_too in ((full, False), (small, True)):
    tree = shapes_lib.torch_moe_shapes(config)
    txs = {"adamw": optax.adamw(1e-3),
           "adam_mini": optax_mini.adam_mini(1e-3, head_dim=config.head_dim,
                                             blocks=optax_mini.BlockRules(weight_layout="torch"))}

    def init_once(name, tree=tree, txs=txs):
      def run():
        _fresh()
        return jax.eval_shape(txs[name].init, tree)
      return run

    times = interleaved({k: init_once(k) for k in txs}, pairs, warmup=0)
    ratio = Ratio.of(times["adam_mini"], times["adamw"])
    log(f"  init, {config.name}: {ratio}")
    leaves = len(tree)
    rows.append([config.name, f"{leaves:,}", "`jax.eval_shape(tx.init, params)`",
                 ms(times["adamw"]), ms(times["adam_mini"]), f"{ratio}"])
    if compile_too:
      states = {k: jax.eval_shape(tx.init, tree) for k, tx in txs.items()}

      times = interleaved(_compile_runs(txs, tree, states, _fresh), pairs, warmup=0)
      ratio = Ratio.of(times["adam_mini"], times["adamw"])
      log(f"  compile, {config.name}: {ratio}")
      rows.append([config.name, f"{leaves:,}", "trace, lower and compile the update",
                   ms(times["adamw"]), ms(times["adam_mini"]), f"{ratio}"])
  return "\n\n".join([
      "### 6b. Setting up on a tree of many leaves",
      "A PyTorch MoE checkpoint as `safetensors.flax.load_file` gives it (`benchmarks/shapes.py`"
      " `torch_moe_shapes`: Qwen3-MoE's dotted names, one `[out, in]` Linear per expert), "
      "`blocks=BlockRules(weight_layout='torch')`, shapes only; every cache emptied before each "
      f"call (JAX's and the partition's), {pairs} interleaved pair(s), no warm-up. Adam-mini's "
      "init derives the partition (every rule tried on every leaf), AdamW's makes zeros.",
      table(["tree", "leaves", "step", "adamw", "adam_mini", "adam_mini / adamw"], rows),
      "Before commit b762e4b, which compiles each rule's pattern once into a regular expression "
      "(and skips a rule at once when a component it names is absent) and traces v's zeros once "
      "for each kind of leaf, the Qwen3-30B-A3B init took 118.2 s against AdamW's 7.4 s (one "
      "run each, commit 33be908, a 2-core AMD EPYC): ~8 ms of rule matching per leaf.",
  ])


def section(quick: bool) -> str:
  config = shapes_lib.LlamaShape("32-layer", dim=256, n_layers=32, n_heads=4, vocab_size=8000)
  shapes = shapes_lib.param_shapes(config)
  pairs = 3 if quick else 20
  txs = {"adamw": optax.adamw(1e-3),
         "adam_mini": optax_mini.adam_mini(1e-3, head_dim=config.head_dim)}
  states = {k: jax.eval_shape(tx.init, shapes) for k, tx in txs.items()}

  times = interleaved(_compile_runs(txs, shapes, states, jax.clear_caches), pairs, warmup=1)
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
      many_leaves(quick),
  ])
