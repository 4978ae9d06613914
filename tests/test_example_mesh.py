"""The example trains on a device mesh (--fsdp/--tp) exactly as on one device.

Uses the 8 virtual CPU devices the root conftest asks for; the same flags run
unchanged on real accelerators.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from examples.llama import train  # noqa: E402

pytestmark = pytest.mark.skipif(
    len(jax.devices()) < 8,
    reason="needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8 before jax is imported",
)

FAST = ["--steps", "8", "--batch-size", "8", "--seq-len", "32", "--warmup", "2", "--lr", "1e-2",
        "--eval-every", "4", "--eval-batches", "1", "--log-every", "1", "--quiet"]


def losses(out):
  with open(os.path.join(out, "metrics.jsonl")) as f:
    return np.array([json.loads(line)["train_loss"] for line in f])


# With int8 m: the tiny preset's MLP is 384 wide (blocks of 128), so over
# --tp 2 each device holds one and a half blocks (this raised
# ShardingTypeError before); the scales of such blocks are kept whole.
@pytest.mark.parametrize("mu_dtype", ["float32", "int8"])
def test_fsdp_tp_mesh_matches_one_device(tmp_path, mu_dtype):
  flags = [*FAST, "--mu-dtype", mu_dtype]
  one = train.main([*flags, "--out", str(tmp_path / "one")])
  mesh = train.main([*flags, "--out", str(tmp_path / "mesh"), "--fsdp", "4", "--tp", "2"])
  np.testing.assert_allclose(losses(tmp_path / "mesh"), losses(tmp_path / "one"), rtol=1e-4)
  assert abs(mesh["final_eval_loss"] - one["final_eval_loss"]) <= 1e-4 * one["final_eval_loss"]
  assert mesh["opt_state_bytes"] == one["opt_state_bytes"]
  # Sharded state: each device holds about an eighth of it.
  assert mesh["opt_state_bytes_per_device"] <= one["opt_state_bytes"] / 8 * 1.2
  assert mesh["mesh"] == {"fsdp": 4, "tp": 2}


def test_resume_onto_another_mesh(tmp_path):
  straight = train.main([*FAST, "--out", str(tmp_path / "straight")])
  train.main([*FAST, "--out", str(tmp_path / "moved"), "--fsdp", "8", "--stop-at", "4", "--checkpoint-every", "4"])
  moved = train.main([*FAST, "--out", str(tmp_path / "moved"), "--fsdp", "2", "--tp", "2", "--resume"])
  np.testing.assert_allclose(losses(tmp_path / "moved"), losses(tmp_path / "straight"), rtol=1e-4)
  assert abs(moved["final_eval_loss"] - straight["final_eval_loss"]) <= 1e-4 * straight["final_eval_loss"]


def test_mesh_larger_than_the_devices_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
    train.main([*FAST, "--out", str(tmp_path / "x"), "--fsdp", "64"])
