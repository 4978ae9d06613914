"""5. Convergence: held-out loss of the example at a fixed budget."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from collections.abc import Sequence

import matplotlib
import numpy as np

from benchmarks.common import (
    example_args,
    log,
    settings,
    table,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# --------------------------------------------------------------------------- 5. convergence


LONG_STEPS = 3000  # the second, longer budget of a full run (AdamW and Adam-mini)
LONG_SEEDS = (0, 1, 2)


def _train_one(label: str, argv: list[str]) -> tuple[float, list[tuple[int, float]]]:
  """One run of the example: its final held-out loss and its training-loss curve."""
  from examples.llama import train

  summary = train.main(argv)
  out = argv[argv.index("--out") + 1]
  with open(os.path.join(out, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  log(f"  convergence {label}: eval {summary['final_eval_loss']:.4f}")  # progress, as each ends
  return summary["final_eval_loss"], [(r["step"], r["train_loss"]) for r in records]


def _train_runs(
    variants: dict[str, list[str]], steps: int, seeds: Sequence[int]
) -> tuple[dict[str, list[float]], dict[str, list[list[tuple[int, float]]]]]:
  """Final held-out losses and training-loss curves of the example, per variant and seed.

  With ``--jobs N > 1`` the runs go to N worker processes; each run is
  deterministic, so the figures do not depend on N.
  """
  finals: dict[str, list[float]] = {}
  curves: dict[str, list[list[tuple[int, float]]]] = {}
  def label(key: tuple[str, int]) -> str:
    return f"{key[0]}, {steps} steps, seed {key[1]}"

  with tempfile.TemporaryDirectory() as tmp:
    jobs = {}
    for seed in seeds:
      for name, flags in variants.items():
        out = os.path.join(tmp, f"{name.replace(' ', '_')}_{steps}_{seed}")
        jobs[name, seed] = [
            *flags, "--steps", str(steps), "--seed", str(seed), "--out", out, "--quiet",
            "--log-every", "5", "--eval-every", str(max(steps // 6, 1)),
            "--checkpoint-every", "0",
        ]
    if settings.jobs > 1:
      import concurrent.futures
      import multiprocessing

      with concurrent.futures.ProcessPoolExecutor(
          settings.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {key: pool.submit(_train_one, label(key), argv) for key, argv in jobs.items()}
        results = {key: future.result() for key, future in futures.items()}
    else:
      results = {key: _train_one(label(key), argv) for key, argv in jobs.items()}
    for (name, _), (final, curve) in results.items():
      finals.setdefault(name, []).append(final)
      curves.setdefault(name, []).append(curve)
  return finals, curves


def _loss_rows(finals: dict[str, list[float]]) -> list[list[str]]:
  base = statistics.mean(finals["adamw"])
  rows = []
  for name, xs in finals.items():
    spread = statistics.stdev(xs) if len(xs) > 1 else 0.0
    rows.append([name, f"{statistics.mean(xs):.4f}", f"{spread:.4f}",
                 f"{min(xs):.4f} .. {max(xs):.4f}",
                 f"{100 * (statistics.mean(xs) / base - 1):+.2f}%"])
  return rows


def _long_budget_text(steps: int) -> str:
  from examples.llama import data

  args = example_args("adamw")
  train_bytes = len(data.load_corpus(None, seq_len=args.seq_len).train)
  epochs = lambda n: n * args.batch_size * args.seq_len / train_bytes  # noqa: E731
  return (
      f"The same with a {LONG_STEPS // steps}x longer budget ({LONG_STEPS} steps, the cosine "
      f"schedule stretched to span them), seeds {list(LONG_SEEDS)}. The default corpus is "
      f"{train_bytes / 1e3:.0f} kB of training text: {steps} steps are "
      f"{epochs(steps):.1f} epochs and {LONG_STEPS} are {epochs(LONG_STEPS):.1f}, so this "
      "budget is data-limited (training loss falls well below held-out loss): it shows "
      "where the optimizers end up, not how fast they fit:"
  )


def section(quick: bool) -> str:
  # Full run: the example's own default budget (what its README reports), then
  # a budget 3x longer, where the paper's parity claims (long runs) apply better.
  steps, seeds = (60, (0, 1)) if quick else (example_args("adamw").steps, tuple(range(settings.seeds)))
  variants = {
      "adamw": ["--optimizer", "adamw"],
      "adam_mini": ["--optimizer", "adam_mini"],
      "adam_mini (value as one block)": ["--optimizer", "adam_mini", "--value-as-one-block"],
      "adam_mini (int8 m)": ["--optimizer", "adam_mini", "--mu-dtype", "int8"],
  }
  finals, curves = _train_runs(variants, steps, seeds)
  budgets = [(steps, seeds, curves)]
  long_finals = None
  if not quick and LONG_STEPS > steps:
    long_finals, long_curves = _train_runs(
        {k: variants[k] for k in ("adamw", "adam_mini", "adam_mini (int8 m)")}, LONG_STEPS, LONG_SEEDS)
    budgets.append((LONG_STEPS, LONG_SEEDS, long_curves))
  fig, axes = plt.subplots(1, len(budgets), figsize=(6.4 * len(budgets), 4.4), squeeze=False)
  for ax, (n_steps, used_seeds, budget_curves) in zip(axes[0], budgets):
    tops = []
    for name, runs in budget_curves.items():
      steps_axis = [s for s, _ in runs[0]]
      losses = np.array([[loss for _, loss in run] for run in runs])
      (line,) = ax.plot(steps_axis, losses.mean(0), label=name)
      ax.fill_between(steps_axis, losses.min(0), losses.max(0), color=line.get_color(), alpha=0.2)
      tops.append(float(losses[:, len(steps_axis) // 10 :].max()))
    ax.set_xlabel("step")
    ax.set_ylim(top=max(tops))  # the first tenth (from ln 256 = 5.5) would flatten the rest
    ax.set_ylabel("training loss (nats/byte), mean and min-max over seeds")
    ax.set_title(f"Example LLaMA (tiny preset), {n_steps} steps, {len(used_seeds)} seeds")
    ax.grid(True, alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(settings.out_dir, "convergence.png"), dpi=120)
  plt.close(fig)
  header = ["optimizer", "mean", "std", "range", "vs AdamW"]
  parts = [
      "## 5. Convergence (held-out loss of the example at a fixed budget)",
      f"`examples/llama/train.py` defaults (tiny preset, batch 16 x seq 128, "
      f"lr {example_args('adamw').lr:g} cosine, "
      f"betas (0.9, 0.95), wd 0.1, clip 1.0), {steps} steps, seeds {list(seeds)}; held-out "
      "loss in nats per byte at the last step.",
      table(header, _loss_rows(finals)),
  ]
  if long_finals is not None:
    parts += [
        _long_budget_text(steps),
        table(header, _loss_rows(long_finals)),
    ]
  parts.append("![convergence](convergence.png)")
  return "\n\n".join(parts)
