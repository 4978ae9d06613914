"""4. Training throughput of the example's full step."""

from __future__ import annotations

import statistics

import matplotlib

from benchmarks.common import (
    Ratio,
    example_args,
    interleaved,
    log,
    ms,
    table,
)

matplotlib.use("Agg")


# --------------------------------------------------------------------------- 4. throughput

INT8 = "adam_mini (int8 m)"


def section(quick: bool) -> str:
  from flax import nnx

  from examples.llama import data, train
  from examples.llama import model as model_lib

  preset = "small" if quick else "paper_39m"
  batch, seq = (16, 128) if quick else (8, 256)
  pairs = 20
  config = model_lib.PRESETS[preset]
  corpus = data.load_corpus(None, seq_len=seq)
  inputs, targets = data.train_batch(corpus.train, seed=0, step=0, batch_size=batch, seq_len=seq)
  runs = {}
  variants = {"adamw": ("adamw", []), "adam_mini": ("adam_mini", []),
              INT8: ("adam_mini", ["--mu-dtype", "int8"])}
  for name, (optimizer, extra) in variants.items():
    args = example_args(optimizer, ["--preset", preset, *extra])
    model = model_lib.Llama(config, seed=0)
    graphdef, params = nnx.split(model)
    params = nnx.to_pure_dict(params)
    tx = train.make_optimizer(optimizer, train.make_schedule(args), args, config)
    train_step, _ = train.make_steps(graphdef, tx)
    box = {"params": params, "state": tx.init(params)}

    def run(train_step=train_step, box=box):
      box["params"], box["state"], loss = train_step(box["params"], box["state"], inputs, targets)
      return loss

    runs[name] = run
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
