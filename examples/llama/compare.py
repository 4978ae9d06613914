r"""Trains AdamW and Adam-mini on the same data and compares them.

Both runs get the same flags, hence the same initialisation (``--seed``), the
same batches in the same order and the same schedule; they differ in the
optimizer only. Writes into ``--out``:

- ``adamw/`` and ``adam_mini/``: each run's ``train.py`` output;
- ``loss_curves.png``: train and held-out loss against step;
- ``comparison.md``: final held-out loss, tokens/s, optimizer-state bytes
  and the Adam-mini / AdamW ratios;
- ``comparison.json``: both summaries.

Usage::

  python examples/llama/compare.py                       # the defaults
  python examples/llama/compare.py --out runs/cmp --steps 300 --lr 1e-3

Every flag other than ``--out`` is passed to ``train.py`` unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import matplotlib  # noqa: E402

# No display on servers and in CI; the figure only goes to a file.
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from examples.llama import train  # noqa: E402

LABELS = {"adamw": "AdamW", "adam_mini": "Adam-mini"}
# AdamW first: it is the baseline every ratio is taken against.
ORDER = ("adamw", "adam_mini")


def _read_metrics(path: str) -> list[dict[str, Any]]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_losses(metrics: dict[str, list[dict[str, Any]]], path: str, title: str) -> None:
  """Draws train (thin) and held-out (markers) loss per optimizer to ``path``.

  Args:
    metrics: optimizer name -> its ``metrics.jsonl`` records.
    path: where the PNG goes.
    title: figure title.
  """
  fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
  for name, color in zip(metrics, ("tab:blue", "tab:orange")):
    records = metrics[name]
    ax.plot(
      [r["step"] for r in records],
      [r["train_loss"] for r in records],
      color=color,
      alpha=0.45,
      linewidth=1,
      label=f"{LABELS[name]} train",
    )
    evals = [r for r in records if "eval_loss" in r]
    ax.plot(
      [r["step"] for r in evals],
      [r["eval_loss"] for r in evals],
      color=color,
      marker="o",
      linewidth=2,
      label=f"{LABELS[name]} held-out",
    )
  ax.set_xlabel("step")
  ax.set_ylabel("cross-entropy (nats per byte)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def comparison_table(summaries: dict[str, dict[str, Any]]) -> str:
  """A markdown table of the summaries, ratios against AdamW.

  Args:
    summaries: optimizer name -> its ``summary.json`` dict; must hold
      ``"adamw"``.

  Returns:
    The table, followed by one sentence on the held-out loss gap.
  """
  base = summaries["adamw"]
  lines = [
    "| optimizer | final held-out loss | tokens/s | optimizer state | state vs AdamW |",
    "|---|---:|---:|---:|---:|",
  ]
  for name, s in summaries.items():
    ratio = s["opt_state_bytes"] / base["opt_state_bytes"]
    lines.append(
      f"| {LABELS[name]} | {s['final_eval_loss']:.4f} "
      f"| {s['tokens_per_second']:,.0f} "
      f"| {s['opt_state_bytes'] / 1e6:.2f} MB ({s['opt_state_bytes']:,} B) "
      f"| {ratio:.3f}x |"
    )
  if "adam_mini" in summaries:
    mini = summaries["adam_mini"]["final_eval_loss"]
    gap = (mini - base["final_eval_loss"]) / base["final_eval_loss"]
    lines.append("")
    lines.append(
      f"Adam-mini's final held-out loss is {gap:+.2%} relative to AdamW's "
      f"({summaries['adam_mini']['steps']} steps, same data and init)."
    )
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs both optimizers and writes the plot and the table.

  Args:
    argv: ``--out DIR`` plus any ``train.py`` flags except ``--optimizer``.

  Returns:
    ``{"summaries": {name: summary}, "table": markdown, "plot": path}``.
  """
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    epilog="Other flags go to train.py (see train.py --help).",
  )
  parser.add_argument(
    "--out", default="runs/compare", help="directory for both runs, the plot and the table"
  )
  args, train_argv = parser.parse_known_args(argv)
  if any(a.split("=")[0] == "--optimizer" for a in train_argv):
    parser.error("--optimizer is chosen by compare.py: it runs both.")

  summaries, metrics = {}, {}
  for name in ORDER:
    run_dir = os.path.join(args.out, name)
    summaries[name] = train.main([*train_argv, "--optimizer", name, "--out", run_dir])
    metrics[name] = _read_metrics(os.path.join(run_dir, "metrics.jsonl"))

  s = summaries["adam_mini"]
  plot_path = os.path.join(args.out, "loss_curves.png")
  plot_losses(
    metrics,
    plot_path,
    f"LLaMA-style '{s['preset']}' on {s['corpus']}, "
    f"{s['steps']} steps x {s['batch_size']}x{s['seq_len']} bytes",
  )
  table = comparison_table(summaries)
  with open(os.path.join(args.out, "comparison.md"), "w") as f:
    f.write(table)
  with open(os.path.join(args.out, "comparison.json"), "w") as f:
    json.dump(summaries, f, indent=2)
  print("\n" + table)
  return {"summaries": summaries, "table": table, "plot": plot_path}


if __name__ == "__main__":
  main()
