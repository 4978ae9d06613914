"""The learning-rate study: AdamW and Adam-mini on data that does not run out.

  python benchmarks/study.py [--preset tiny] [--corpus stdlib] [--jobs N] [--out benchmarks/study]

For one preset of the example (``examples/llama``) on a corpus that stays
under one epoch at every budget here (``--corpus stdlib``: ~12 MB of the
standard library's sources, whole files held out):

1. a grid, seed 0: both optimizers over the same learning rates x warmups;
2. seeds 0, 1, 2 at AdamW's best setting (AdamW, and Adam-mini as a drop-in),
   at Adam-mini's best setting, and ``value_as_one_block`` at Adam-mini's best;
3. at AdamW's best setting, each parameter group (heads, value, attention
   out, MLP, embedding, lm_head; value + attention out) handed back to
   per-element v, one at a time, over the same seeds (``--no-ablation`` skips);
4. a report: best-vs-best and drop-in gaps (mean +- std over seeds), the
   ablation, loss vs learning rate, loss vs step at the best settings (plots
   beside it).

Every run is cached as JSON under ``--out`` (keyed by its flags), so the study
can be stopped and resumed, and a grid can be widened without re-running what
is there. Runs are deterministic: ``--jobs`` changes the wall time only.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

GRIDS = {
    # preset: (learning rates, warmups, seeds at the best settings)
    "tiny": ((5e-4, 1e-3, 2e-3, 4e-3), (30, 100), (0, 1, 2)),
    # Adam-mini's best on the first three (5e-4) was the grid's edge: 2.5e-4 brackets it.
    "small": ((2.5e-4, 5e-4, 1e-3, 2e-3), (100,), (0, 1)),
}
STEPS = 1000


# Phase 3: at AdamW's best setting (where Adam-mini as a drop-in trails), which
# parameter groups, handed back to per-element v one at a time, recover AdamW
# (--per-element); and whether variants that keep the memory do: one v per
# head for value / attention out (--per-head), one per output neuron for
# query / key (--per-neuron). Most telling first: a study cut short still
# reports those.
ABLATIONS = (
    ("per_element", "heads"), ("per_element", "value,attn_out"), ("per_head", "value,attn_out"),
    ("per_neuron", "heads"), ("per_element", "value"), ("per_element", "attn_out"), ("per_element", "mlp"),
    ("per_head", "value"), ("per_head", "attn_out"),
    ("per_element", "embed"), ("per_element", "lm_head"),
)


def run_flags(preset: str, corpus: str, optimizer: str, lr: float, warmup: int, seed: int,
              value_as_one_block: bool = False, per_element: str = "", per_head: str = "",
              per_neuron: str = "") -> list[str]:
  flags = ["--preset", preset, "--corpus", corpus, "--optimizer", optimizer, "--lr", repr(lr),
           "--warmup", str(warmup), "--seed", str(seed), "--steps", str(STEPS)]
  if value_as_one_block:
    flags.append("--value-as-one-block")
  if per_element:
    flags += ["--per-element", per_element]
  if per_head:
    flags += ["--per-head", per_head]
  if per_neuron:
    flags += ["--per-neuron", per_neuron]
  return flags


def _key(flags: Sequence[str]) -> str:
  return hashlib.sha1(" ".join(flags).encode()).hexdigest()[:16]


def _train(flags: list[str], out_dir: str) -> dict[str, Any]:
  """One run of the example; its final held-out loss and curves, cached."""
  cached = _cached(flags, out_dir)
  if cached is not None:
    return cached
  from examples.llama import train

  run_dir = os.path.join(out_dir, "runs", _key(flags))
  start = time.perf_counter()
  summary = train.main([*flags, "--out", run_dir, "--quiet", "--log-every", "10",
                        "--eval-every", str(STEPS // 10), "--checkpoint-every", "0"])
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  result = {
      "flags": flags,
      "final_eval_loss": summary["final_eval_loss"],
      "train_curve": [(r["step"], r["train_loss"]) for r in records if "train_loss" in r],
      "eval_curve": [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r],
      "seconds": time.perf_counter() - start,
  }
  _write(flags, out_dir, result)
  print(f"  {' '.join(flags)}: held-out {result['final_eval_loss']:.4f} ({result['seconds']:.0f} s)", flush=True)
  return result


def _write(flags: list[str], out_dir: str, result: dict[str, Any]) -> None:
  path = os.path.join(out_dir, f"{_key(flags)}.json")
  with open(path + ".tmp", "w") as f:
    json.dump(result, f)
  os.replace(path + ".tmp", path)


def _cached(flags: list[str], out_dir: str) -> dict[str, Any] | None:
  path = os.path.join(out_dir, f"{_key(flags)}.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def run_all(runs: list[list[str]], out_dir: str, jobs: int,
            cached_only: bool = False) -> dict[str, dict[str, Any]]:
  if cached_only:
    found = {_key(flags): _cached(flags, out_dir) for flags in runs}
    return {key: result for key, result in found.items() if result is not None}
  if jobs > 1:
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
      futures = {_key(flags): pool.submit(_train, flags, out_dir) for flags in runs}
      return {key: future.result() for key, future in futures.items()}
  return {_key(flags): _train(flags, out_dir) for flags in runs}


def mean_std(xs: Sequence[float]) -> str:
  return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"


def gap(a: Sequence[float], b: Sequence[float]) -> str:
  return f"{100 * (statistics.mean(a) / statistics.mean(b) - 1):+.2f} %"


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="tiny", choices=sorted(GRIDS))
  parser.add_argument("--corpus", default="stdlib")
  parser.add_argument("--jobs", type=int, default=1)
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "study"))
  parser.add_argument("--ablation", action=argparse.BooleanOptionalAction, default=True,
                      help="phase 3: per-element / per-head groups at AdamW's best setting")
  parser.add_argument("--ablations", default=None,
                      help="comma-separated ablation rows, each kind:groups (e.g. "
                      "per_neuron:heads,per_element:heads); default: all of ABLATIONS")
  parser.add_argument("--value-as-one-block", action=argparse.BooleanOptionalAction, default=True,
                      help="run value_as_one_block at Adam-mini's best setting")
  parser.add_argument("--lrs", default=None, help="comma-separated peak learning rates (default: GRIDS)")
  parser.add_argument("--warmups", default=None, help="comma-separated warmups (default: GRIDS)")
  parser.add_argument("--seeds", default=None, help="comma-separated seeds at the best settings")
  parser.add_argument("--ablation-seeds", default=None,
                      help="comma-separated seeds of the ablation rows (default: --seeds)")
  parser.add_argument("--report-only", action="store_true",
                      help="run nothing: report what is cached (ablation rows not yet run are marked)")
  args = parser.parse_args(argv)
  from benchmarks.common import commit, machine_line

  lrs, warmups, seeds = GRIDS[args.preset]
  lrs = tuple(float(x) for x in args.lrs.split(",")) if args.lrs else lrs
  warmups = tuple(int(x) for x in args.warmups.split(",")) if args.warmups else warmups
  seeds = tuple(int(x) for x in args.seeds.split(",")) if args.seeds else seeds
  ablation_seeds = (tuple(int(x) for x in args.ablation_seeds.split(",")) if args.ablation_seeds
                    else seeds)
  if not set(ablation_seeds) <= set(seeds):
    parser.error(f"--ablation-seeds {list(ablation_seeds)}: each must be one of --seeds {list(seeds)} "
                 "(an ablation row is compared with AdamW at its best over the same seeds).")
  ablations = ABLATIONS
  if args.ablations:
    ablations = tuple(tuple(row.split(":", 1)) for row in args.ablations.split(","))
    bad = [row for row in ablations if len(row) != 2 or row[0] not in ("per_element", "per_head", "per_neuron")]
    if bad:
      parser.error(f"--ablations {bad}: each row is kind:groups, kind one of per_element, per_head, per_neuron.")
  out_dir = os.path.join(args.out, f"{args.preset}_{args.corpus}")
  os.makedirs(out_dir, exist_ok=True)
  wall = time.perf_counter()

  def flags(optimizer, lr, warmup, seed, value_as_one_block=False, per_element="", per_head="",
            per_neuron=""):
    return run_flags(args.preset, args.corpus, optimizer, lr, warmup, seed, value_as_one_block,
                     per_element, per_head, per_neuron)

  grid = [flags(o, lr, w, seeds[0]) for o in ("adamw", "adam_mini") for lr in lrs for w in warmups]
  results = run_all(grid, out_dir, args.jobs, cached_only=args.report_only)
  if args.report_only and len(results) < len(grid):
    parser.error(f"--report-only: {len(grid) - len(results)} of the {len(grid)} grid runs are not "
                 f"cached in {out_dir}; run the study without --report-only first.")

  def loss(optimizer, lr, warmup, seed=seeds[0], vob=False):
    return results[_key(flags(optimizer, lr, warmup, seed, vob))]["final_eval_loss"]

  best = {o: min(((lr, w) for lr in lrs for w in warmups), key=lambda s, o=o: loss(o, *s))
          for o in ("adamw", "adam_mini")}
  settings = [("adamw", best["adamw"], False), ("adam_mini", best["adamw"], False),
              ("adam_mini", best["adam_mini"], False)]
  settings += [("adam_mini", best["adam_mini"], True)] if args.value_as_one_block else []
  seeded = [flags(o, lr, w, s, vob) for o, (lr, w), vob in settings for s in seeds]
  results.update(run_all(seeded, out_dir, args.jobs, cached_only=args.report_only))
  if args.report_only and not all(_key(f) in results for f in seeded):
    parser.error(f"--report-only: runs at the best settings are not all cached in {out_dir}.")

  def over_seeds(optimizer, setting, vob=False):
    return [loss(optimizer, *setting, s, vob) for s in seeds]

  def ablated(group, seed):
    kind, groups = group
    return flags("adam_mini", *best["adamw"], seed, **{kind: groups})

  ablation = ([ablated(group, seed) for group in ablations for seed in ablation_seeds]
              if args.ablation else [])
  results.update(run_all(ablation, out_dir, args.jobs, cached_only=args.report_only))
  adamw_best = over_seeds("adamw", best["adamw"])
  mini_best = over_seeds("adam_mini", best["adam_mini"])
  drop_in = over_seeds("adam_mini", best["adamw"])
  vob = over_seeds("adam_mini", best["adam_mini"], True) if args.value_as_one_block else None
  seconds = sum(r["seconds"] for r in results.values())
  lines = [
      f"## Learning-rate study: preset `{args.preset}`, corpus `{args.corpus}`, {STEPS} steps",
      "",
      _budget_line(args.corpus),
      "",
      "Command: `python benchmarks/study.py "
      + " ".join(a for a in (sys.argv[1:] if argv is None else argv) if a != "--report-only") + "`",
      "",
      f"Machine: {machine_line()}; commit {commit()}. {len(results)} runs, "
      f"{seconds / 60:.0f} min of training (wall {(time.perf_counter() - wall) / 60:.0f} min this "
      f"invocation, --jobs {args.jobs}).",
      "",
      f"Grid (seed {seeds[0]}), final held-out loss (nats/byte):",
      "",
      "| lr | " + " | ".join(f"AdamW w{w}" for w in warmups) + " | "
      + " | ".join(f"Adam-mini w{w}" for w in warmups) + " |",
      "|---:|" + "---:|" * (2 * len(warmups)),
  ]
  for lr in lrs:
    lines.append(f"| {lr:g} | " + " | ".join(f"{loss('adamw', lr, w):.4f}" for w in warmups) + " | "
                 + " | ".join(f"{loss('adam_mini', lr, w):.4f}" for w in warmups) + " |")
  lines += [
      "",
      f"Best settings (seed {seeds[0]}): AdamW lr {best['adamw'][0]:g} warmup {best['adamw'][1]}; "
      f"Adam-mini lr {best['adam_mini'][0]:g} warmup {best['adam_mini'][1]}. Over seeds {list(seeds)}:",
      "",
      "| run | held-out loss | vs AdamW at its best |",
      "|---|---:|---:|",
      f"| AdamW at its best | {mean_std(adamw_best)} | |",
      f"| Adam-mini at its best | {mean_std(mini_best)} | {gap(mini_best, adamw_best)} |",
      f"| Adam-mini as a drop-in (AdamW's best setting) | {mean_std(drop_in)} | {gap(drop_in, adamw_best)} |",
  ]
  if vob is not None:
    lines.append(f"| Adam-mini, value as one block, at its best | {mean_std(vob)} | {gap(vob, adamw_best)} |")
  if args.ablation:
    lines += [
        "",
        f"Ablation at AdamW's best setting (lr {best['adamw'][0]:g}, warmup {best['adamw'][1]}): "
        "one group at a time back to per-element v (plain Adam), or to a variant that keeps the "
        "memory (value / attention out per head, query / key per output neuron), over seeds "
        f"{list(ablation_seeds)}, against AdamW over the same seeds:",
        "",
        "| blocks changed | held-out loss | vs AdamW at its best |",
        "|---|---:|---:|",
    ]
    adamw_ablation = [loss("adamw", *best["adamw"], s) for s in ablation_seeds]
    drop_in_ablation = [loss("adam_mini", *best["adamw"], s) for s in ablation_seeds]
    lines.append(f"| (none: Adam-mini as a drop-in) | {mean_std(drop_in_ablation)} | "
                 f"{gap(drop_in_ablation, adamw_ablation)} |")
    for group in ablations:
      label = f"{group[1]} {group[0].replace('_', ' ')}"
      found = {seed: results.get(_key(ablated(group, seed))) for seed in ablation_seeds}
      cached = [seed for seed, r in found.items() if r is not None]
      xs = [found[seed]["final_eval_loss"] for seed in cached]
      if not xs:
        lines.append(f"| {label} | not run | |")
      elif len(xs) < len(ablation_seeds):
        # Part of the seeds: compared with AdamW over those seeds only.
        against = [loss("adamw", *best["adamw"], seed) for seed in cached]
        lines.append(f"| {label} (seeds {cached} only) | {mean_std(xs)} | {gap(xs, against)} |")
      else:
        lines.append(f"| {label} | {mean_std(xs)} | {gap(xs, adamw_ablation)} |")
  text = "\n".join(lines) + "\n"
  with open(os.path.join(args.out, f"STUDY_{args.preset}_{args.corpus}.md"), "w") as f:
    f.write(text)
  _plots(args, lrs, warmups, loss, results, best, flags, seeds)
  print(text)
  return text


def _budget_line(corpus: str) -> str:
  """The budget in tokens and in epochs of the corpus's training part."""
  from examples.llama import data, train

  defaults = train.build_parser().parse_args([])
  tokens = STEPS * defaults.batch_size * defaults.seq_len
  size = len(data.load_corpus(None, seq_len=defaults.seq_len, corpus=corpus).train)
  return (f"Budget: {STEPS} steps x {defaults.batch_size} x {defaults.seq_len} bytes = "
          f"{tokens / 1e6:.2f} M tokens, **{tokens / size:.2f} epochs** of the corpus's "
          f"{size / 1e6:.2f} MB training part.")


def _plots(args, lrs, warmups, loss, results, best, flags, seeds) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  for optimizer, color in (("adamw", "tab:blue"), ("adam_mini", "tab:orange")):
    for w, style in zip(warmups, ("-", "--")):
      left.plot(lrs, [loss(optimizer, lr, w) for lr in lrs], style, marker="o", color=color,
                label=f"{optimizer} warmup {w}")
    lr, w = best[optimizer]
    curve = results[_key(flags(optimizer, lr, w, seeds[0]))]["eval_curve"]
    right.plot(*zip(*curve), color=color, marker=".", label=f"{optimizer} lr {lr:g} w{w}")
  left.set(xscale="log", xlabel="peak learning rate", ylabel="held-out loss (seed 0)",
           title=f"{args.preset}, {args.corpus}: loss vs lr")
  right.set(xlabel="step", ylabel="held-out loss", title="at each optimizer's best setting")
  for ax in (left, right):
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, f"study_{args.preset}_{args.corpus}.png"), dpi=100)


if __name__ == "__main__":
  main()
