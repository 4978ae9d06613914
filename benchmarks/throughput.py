"""4. Training throughput of the example's full step."""

from __future__ import annotations

import statistics

import matplotlib

from benchmarks.common import (
    INT8,
    Ratio,
    example_step_runs,
    interleaved,
    log,
    ms,
    table,
)

matplotlib.use("Agg")


# --------------------------------------------------------------------------- 4. throughput


def section(quick: bool) -> str:
  from examples.llama import model as model_lib

  preset = "small" if quick else "paper_39m"
  batch, seq = (16, 128) if quick else (8, 256)
  pairs = 20
  config = model_lib.PRESETS[preset]
  runs = example_step_runs(preset, batch, seq)
  times = interleaved(runs, pairs, warmup=2)
  tokens = batch * seq
  tps = {k: tokens / statistics.median(v) for k, v in times.items()}
  ratio = Ratio.of(times["adamw"], times["adam_mini"])
  int8 = Ratio.of(times["adamw"], times[INT8])
  log(f"  throughput: {tps} ratio {ratio}, int8 m {int8}")
  return "\n\n".join([
      "## 4. Training throughput (the example's full training step)",
      f"`examples.llama.train.make_steps` (forward, backward, global-norm clip, optimizer, "
      f"apply), preset `{preset}` ({model_lib.param_count(model_lib.Llama(config)) / 1e6:.1f}M "
      f"params), batch {batch} x seq {seq}, {pairs} interleaved pairs.",
      table(["optimizer", "step (median)", "tokens/s"],
            [[k, ms(v), f"{tps[k]:,.0f}"] for k, v in times.items()]),
      f"tokens/s Adam-mini / AdamW = **{ratio}** (per-pair ratio of step times); with an "
      f"int8 `m` (`--mu-dtype int8`, the power map) **{int8}**.",
  ])
