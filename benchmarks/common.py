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

