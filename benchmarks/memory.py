"""1. Optimizer-state memory from shapes only."""

from __future__ import annotations

import os

import matplotlib

import optax_mini
from benchmarks import shapes as shapes_lib
from benchmarks.common import (
    GB,
    optimizers,
    settings,
    table,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# --------------------------------------------------------------------------- 1. state memory


def section(quick: bool) -> str:
  del quick  # shapes only: always the full ladder
  rows, series = [], {}
  for config in shapes_lib.PAPER:
    params = shapes_lib.param_shapes(config)
    n = config.num_params
    row = [config.name, f"{n / 1e6:,.1f}M"]
    for name, tx in optimizers(config.head_dim).items():
      b = optax_mini.state_bytes(tx, params)
      series.setdefault(name, []).append((n, b))
      row.append(f"{b / GB:.3f}")
    rows.append(row)
  seven = {k: v[-1][1] for k, v in series.items()}
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  for name, points in series.items():
    ax.loglog([p[0] for p in points], [p[1] for p in points], "o-", label=name)
  ax.set_xlabel("parameters (paper's Llama-2 ladder, vocab 32000)")
  ax.set_ylabel("optimizer state (bytes, float32 params)")
  ax.set_title("Optimizer-state memory (jax.eval_shape)")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(settings.out_dir, "state_memory.png"), dpi=120)
  plt.close(fig)
  names = list(series)
  seven_line = (
      f"Llama-2-7B: AdamW **{seven['adamw'] / GB:.2f} GB** -> Adam-mini "
      f"**{seven['adam_mini'] / GB:.2f} GB** ({seven['adam_mini'] / seven['adamw']:.3f}x; "
      f"paper: 53.92 -> 26.96 GB), **{seven['adam_mini (bf16 m)'] / GB:.2f} GB** with bf16 m, "
      f"**{seven['adam_mini (int8 m)'] / GB:.2f} GB** with int8 m "
      f"({seven['adam_mini (int8 m)'] / seven['adamw']:.3f}x; target <= 0.13x)."
  )
  return "\n\n".join([
      "## 1. Optimizer-state memory (shapes only)",
      "`optax_mini.state_bytes` = `jax.eval_shape(tx.init, params)`, float32 parameters, "
      "GB = 1e9 bytes. Shapes: the official repository's torchtitan `llama2_configs` "
      "(39M .. 1B, Llama-2-7B), HF names in Flax layout (`benchmarks/shapes.py`).",
      table(["model", "params"] + [f"{n} (GB)" for n in names], rows),
      seven_line,
      "![state memory](state_memory.png)",
  ])
