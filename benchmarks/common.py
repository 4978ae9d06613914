"""Shared by the benchmark sections: the machine line, the optimizers compared,
interleaved timing, tables, and the run's settings (``run.py`` sets them)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_mini

HERE = os.path.dirname(os.path.abspath(__file__))
GB = 1e9


@dataclasses.dataclass
class Settings:
  """What ``run.py``'s flags set for the sections."""

  seeds: int = 3  # convergence seeds of a full run (--seeds)
  jobs: int = 1  # processes for the convergence runs (--jobs)
  out_dir: str = HERE  # plots go beside --out, so a trial run never overwrites the committed ones


settings = Settings()

# --------------------------------------------------------------------------- utilities


def machine_line() -> str:
  """CPU model, cores and library versions, for every table."""
  model = platform.processor() or "unknown CPU"
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
  return (
      f"{model}, {os.cpu_count()} cores, {jax.default_backend()} ({devices}); "
      f"jax {jax.__version__}, optax {optax.__version__}, "
      f"optax_mini {optax_mini.__version__}, Python {platform.python_version()}"
  )


def commit() -> str:
  """The checkout's short commit hash (``"unknown"`` outside git)."""
  import subprocess

  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                          text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def optimizers(head_dim: int) -> dict[str, optax.GradientTransformation]:
  """The state-memory contenders, each with its library defaults."""
  return {
      "adamw": optax.adamw(1e-3),
      "adam_mini": optax_mini.adam_mini(1e-3, head_dim=head_dim),
      "adam_mini (bf16 m)": optax_mini.adam_mini(1e-3, head_dim=head_dim, mu_dtype=jnp.bfloat16),
      "adam_mini (int8 m)": optax_mini.adam_mini(1e-3, head_dim=head_dim, mu_dtype=jnp.int8),
      "adafactor": optax.adafactor(1e-3),
      "lion": optax.lion(1e-3),
  }


def interleaved(
    runs: dict[str, Callable[[], Any]], pairs: int, warmup: int = 3
) -> dict[str, list[float]]:
  """Seconds per call of each zero-argument ``run``, interleaved A B A B."""
  for _ in range(warmup):
    for run in runs.values():
      jax.block_until_ready(run())
  times: dict[str, list[float]] = {k: [] for k in runs}
  for _ in range(pairs):
    for name, run in runs.items():
      start = time.perf_counter()
      jax.block_until_ready(run())
      times[name].append(time.perf_counter() - start)
  return times


@dataclasses.dataclass(frozen=True)
class Ratio:
  """Median of per-pair ratios ``base / other`` and its interquartile range."""

  median: float
  q1: float
  q3: float
  pairs: int

  @classmethod
  def of(cls, base: Sequence[float], other: Sequence[float]) -> Ratio:
    ratios = sorted(b / o for b, o in zip(base, other))
    q = np.quantile(ratios, [0.25, 0.5, 0.75])
    return cls(float(q[1]), float(q[0]), float(q[2]), len(ratios))

  def __str__(self) -> str:
    return f"{self.median:.2f}x (IQR {self.q1:.2f}-{self.q3:.2f}, {self.pairs} pairs)"


def ms(xs: Sequence[float]) -> str:
  return f"{1e3 * statistics.median(xs):.1f} ms"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
  return "\n".join(lines)


def log(msg: str) -> None:
  print(msg, flush=True)


def make_update_step(tx: optax.GradientTransformation) -> Callable[..., Any]:
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


def state_bytes_per_device(state: Any) -> int:
  total = 0
  for x in jax.tree.leaves(state):
    sharding = getattr(x, "sharding", None)
    shape = sharding.shard_shape(x.shape) if sharding is not None else x.shape
    total += math.prod(shape) * jnp.dtype(x.dtype).itemsize
  return total


def example_args(optimizer: str, extra: Sequence[str] = ()) -> argparse.Namespace:
  from examples.llama import train

  return train.build_parser().parse_args(["--optimizer", optimizer, *extra])



# --------------------------------------------------------------------------- shared runs

INT8 = "adam_mini (int8 m)"
INT8_DYNAMIC = "adam_mini (int8 m, dynamic map)"


def update_contenders(head_dim: int) -> dict[str, optax.GradientTransformation]:
  """The update step's contenders (weight decay 1e-4): ``adamw`` first (the
  reference), Adam-mini with a float32 ``m``, an int8 ``m`` (the default power
  map) and an int8 ``m`` with the dynamic map."""
  mini = lambda **kw: optax_mini.adam_mini(1e-3, weight_decay=1e-4, head_dim=head_dim, **kw)  # noqa: E731
  return {
      "adamw": optax.adamw(1e-3, weight_decay=1e-4),
      "adam_mini": mini(),
      INT8: mini(mu_dtype=jnp.int8),
      INT8_DYNAMIC: mini(mu_dtype=jnp.int8, mu_code="dynamic"),
  }


def compiled_peak_bytes(compiled: Any) -> int | None:
  """XLA's peak estimate for a compiled step: arguments + outputs - aliased
  (donated) + temporaries; ``None`` where the backend gives no analysis."""
  m = compiled.memory_analysis()
  if m is None:
    return None
  return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes)


def update_runs(
    shapes: Any, txs: dict[str, optax.GradientTransformation]
) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
  """Per optimizer, a zero-argument run of its update step (update +
  ``apply_updates``, compiled with parameters and state donated; each call
  carries them to the next) on fresh parameters of ``shapes``, and the
  compiled step itself."""
  from benchmarks import shapes as shapes_lib

  runs, compiled_steps = {}, {}
  for name, tx in txs.items():
    params = shapes_lib.materialize(shapes, seed=0)
    grads = shapes_lib.materialize(shapes, seed=1, scale=1e-3)
    state = tx.init(params)
    compiled = jax.jit(make_update_step(tx), donate_argnums=(0, 1)).lower(
        params, state, grads).compile()
    box = {"params": params, "state": state}

    def run(compiled=compiled, box=box, grads=grads):
      box["params"], box["state"] = compiled(box["params"], box["state"], grads)
      return box["params"]

    runs[name], compiled_steps[name] = run, compiled
  return runs, compiled_steps


# The example's optimizers as run.py's throughput and device.py's training
# sections time them: name -> (--optimizer, extra flags).
EXAMPLE_VARIANTS = {
    "adamw": ("adamw", ()),
    "adam_mini": ("adam_mini", ()),
    INT8: ("adam_mini", ("--mu-dtype", "int8")),
}


def example_step_runs(preset: str, batch: int, seq: int) -> dict[str, Callable[[], Any]]:
  """Per :data:`EXAMPLE_VARIANTS` entry, a zero-argument run of the example's
  whole training step (``examples.llama.train.make_steps``) on one fixed batch
  of the default corpus, from the same initial model; each call carries the
  parameters and state to the next and returns the loss."""
  from flax import nnx

  from examples.llama import data, train
  from examples.llama import model as model_lib

  config = model_lib.PRESETS[preset]
  corpus = data.load_corpus(None, seq_len=seq)
  inputs, targets = data.train_batch(corpus.train, seed=0, step=0, batch_size=batch, seq_len=seq)
  runs = {}
  for name, (optimizer, extra) in EXAMPLE_VARIANTS.items():
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
  return runs
