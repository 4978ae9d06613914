r"""The accelerator check: update and training-step times against ``optax.adamw``.

One short script for a session that has a GPU (or TPU) for a few minutes::

  PYTHONPATH=. python benchmarks/device.py --out $OUT/device.md   # ~3-5 min on one H200
  python benchmarks/device.py --quick                             # seconds, any backend

It times, on ``jax.devices()[0]`` and interleaved with ``optax.adamw`` in the
same process (A B A B ..., the median of per-pair ratios with its
interquartile range, as in ``RESULTS.md`` section 3):

1. the jitted update step (update + ``apply_updates``, parameters and state
   donated) of LLaMA-shaped float32 trees: 102M and 1.1B parameters, for
   Adam-mini with a float32 ``m``, with an int8 ``m`` (the default power map)
   and with the dynamic map; with XLA's peak-memory estimate of each compiled
   step (``memory_analysis``);
2. the example's whole training step (forward, backward, clip, optimizer,
   apply; ``examples.llama.train.make_steps``), preset ``paper_102m``,
   batch 32 x 512 tokens, for the same optimizers.

It writes one Markdown report (``--out``) and prints it. On CPU the same
tables are ``RESULTS.md`` sections 3 and 4; this script exists so that a GPU
session spends its minutes measuring, not writing code.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import optax_mini  # noqa: E402
from benchmarks import shapes as shapes_lib  # noqa: E402
from benchmarks.common import (  # noqa: E402
    Ratio,
    commit,
    example_args,
    interleaved,
    log,
    machine_line,
    make_update_step,
    ms,
    table,
)

TREES = (
    shapes_lib.SPEED[-1],  # 102M
    shapes_lib.LlamaShape("1.1B", dim=2048, n_layers=22, n_heads=32),
)
QUICK_TREES = (shapes_lib.LlamaShape("1M", dim=128, n_layers=2, n_heads=4, vocab_size=1000),)
INT8, INT8_DYNAMIC = "adam_mini (int8 m)", "adam_mini (int8 m, dynamic map)"


def update_optimizers(head_dim: int) -> dict[str, optax.GradientTransformation]:
  """The update step's contenders; ``adamw`` first (the reference)."""
  mini = lambda **kw: optax_mini.adam_mini(1e-3, weight_decay=1e-4, head_dim=head_dim, **kw)  # noqa: E731
  return {
      "adamw": optax.adamw(1e-3, weight_decay=1e-4),
      "adam_mini": mini(),
      INT8: mini(mu_dtype=jnp.int8),
      INT8_DYNAMIC: mini(mu_dtype=jnp.int8, mu_code="dynamic"),
  }


def update_section(quick: bool) -> str:
  trees = QUICK_TREES if quick else TREES
  pairs = 3 if quick else 30
  rows = []
  for config in trees:
    shapes = shapes_lib.param_shapes(config)
    runs, peaks = {}, {}
    for name, tx in update_optimizers(config.head_dim).items():
      params = shapes_lib.materialize(shapes, seed=0)
      grads = shapes_lib.materialize(shapes, seed=1, scale=1e-3)
      state = tx.init(params)
      compiled = jax.jit(make_update_step(tx), donate_argnums=(0, 1)).lower(
          params, state, grads).compile()
      memory = compiled.memory_analysis()
      peaks[name] = None if memory is None else (
          memory.argument_size_in_bytes + memory.output_size_in_bytes
          - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
      box = {"params": params, "state": state}

      def run(compiled=compiled, box=box, grads=grads):
        box["params"], box["state"] = compiled(box["params"], box["state"], grads)
        return box["params"]

      runs[name] = run
    times = interleaved(runs, pairs)
    for name in runs:
      ratio = Ratio.of(times["adamw"], times[name])
      peak = "n/a" if peaks[name] is None else f"{peaks[name] / 1e6:,.0f} MB"
      rows.append([config.name, f"{config.num_params / 1e6:.0f}M", name, ms(times[name]),
                   str(ratio), peak])
      log(f"  update {config.name} {name}: {ms(times[name])}, {ratio}, peak {peak}")
    del runs
  return "\n\n".join([
      "## Update step (update + apply_updates, params and state donated)",
      f"LLaMA-shaped float32 trees (HF names), weight decay 1e-4, interleaved, {pairs} pairs "
      "after 3 warm-up rounds. Ratio = adamw time / this optimizer's time (> 1: faster than "
      "AdamW). Peak = XLA's estimate for the compiled step (arguments + outputs - aliased + "
      "temporaries).",
      table(["tree", "params", "optimizer", "time (median)", "vs adamw", "peak"], rows),
  ])


def training_section(quick: bool) -> str:
  from flax import nnx

  from examples.llama import data, train
  from examples.llama import model as model_lib

  preset, batch, seq = ("tiny", 4, 64) if quick else ("paper_102m", 32, 512)
  pairs = 3 if quick else 20
  config = model_lib.PRESETS[preset]
  corpus = data.load_corpus(None, seq_len=seq)
  inputs, targets = data.train_batch(corpus.train, seed=0, step=0, batch_size=batch, seq_len=seq)
  variants = {"adamw": ("adamw", []), "adam_mini": ("adam_mini", []),
              INT8: ("adam_mini", ["--mu-dtype", "int8"])}
  runs = {}
  for name, (optimizer, extra) in variants.items():
    args = example_args(optimizer, ["--preset", preset, *extra])
    graphdef, params = nnx.split(model_lib.Llama(config, seed=0))
    params = nnx.to_pure_dict(params)
    tx = train.make_optimizer(optimizer, train.make_schedule(args), args, config)
    train_step, _ = train.make_steps(graphdef, tx)
    box = {"params": params, "state": tx.init(params)}

    def run(train_step=train_step, box=box):
      box["params"], box["state"], loss = train_step(box["params"], box["state"], inputs, targets)
      return loss

    runs[name] = run
  times = interleaved(runs, pairs, warmup=2)
  rows = []
  for name in runs:
    tokens_per_s = batch * seq / statistics.median(times[name])
    ratio = Ratio.of(times["adamw"], times[name])
    rows.append([name, ms(times[name]), f"{tokens_per_s:,.0f}", str(ratio)])
    log(f"  training {name}: {ms(times[name])}, {tokens_per_s:,.0f} tokens/s, {ratio}")
  return "\n\n".join([
      "## Training step (the example's, whole)",
      f"`examples.llama.train.make_steps`, preset `{preset}`, batch {batch} x {seq} tokens, "
      f"{pairs} interleaved pairs after 2 warm-up rounds, same batch every step.",
      table(["optimizer", "step (median)", "tokens/s", "vs adamw"], rows),
  ])


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny shapes, a few pairs (a smoke test)")
  parser.add_argument("--out", default=None, help="write the report here too")
  parser.add_argument("--commit", default=None,
                      help="the commit to name (default: git's; a copied tree may have no .git)")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  machine = machine_line()
  log(f"machine: {machine}")
  parts = [update_section(args.quick), training_section(args.quick)]
  text = "\n\n".join([
      "# optax_mini on an accelerator: update and training step vs optax.adamw",
      f"Generated by `python benchmarks/device.py{' --quick' if args.quick else ''}` in "
      f"{time.perf_counter() - start:.0f} s on {machine}; commit {args.commit or commit()}.",
      *parts,
  ]) + "\n"
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      f.write(text)
  print(text)
  return text


if __name__ == "__main__":
  main()
