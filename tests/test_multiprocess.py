"""Two processes (4 CPU devices each, one global 8-device mesh joined by
``jax.distributed.initialize`` with gloo CPU collectives) give the one-device
numbers, and their orbax checkpoint, written by both, restores in one process
onto 8 devices. The README's multi-host recipe, run for real."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import multiprocess_case as case
import numpy as np
import pytest
from jax.sharding import NamedSharding

import optax_mini

HERE = pathlib.Path(__file__).parent
ocp = pytest.importorskip("orbax.checkpoint", reason="the checkpoint half needs orbax-checkpoint (the test extras)")

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="restoring needs 8 devices (the root conftest sets XLA_FLAGS)")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def one_device():
  tx = case.make_tx()
  params = jax.tree.map(jnp.asarray, case.host_tree(0))
  state = tx.init(params)
  step = jax.jit(case.apply, static_argnums=0)
  for t in range(case.STEPS):
    params, state = step(tx, params, state, jax.tree.map(jnp.asarray, case.host_tree(100 + t)))
  return {"params": params, "state": state}


def assert_close(got: dict, want, rtol=1e-5):
  flat = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(want)[0]}
  assert got.keys() == flat.keys()
  for key, w in flat.items():
    g = np.asarray(got[key])
    assert g.shape == w.shape, key
    assert np.max(np.abs(g - w)) <= rtol * max(np.max(np.abs(w)), 1e-30), key


def test_two_processes_match_one_device_and_checkpoint_restores_on_eight_devices(tmp_path):
  port = free_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
  workers = [
      subprocess.Popen([sys.executable, str(HERE / "multiprocess_worker.py"), str(i), str(port), str(tmp_path)],
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)
  ]
  outputs = []
  for worker in workers:
    try:
      out, _ = worker.communicate(timeout=600)
    except subprocess.TimeoutExpired:
      for w in workers:
        w.kill()
      raise
    outputs.append(out)
  for i, (worker, out) in enumerate(zip(workers, outputs)):
    assert worker.returncode == 0, f"process {i} failed:\n{out[-4000:]}"

  reference = one_device()
  with np.load(tmp_path / "result.npz") as result:
    assert_close(dict(result), reference)

  # Restore what both processes wrote, here, onto one process's 8 devices.
  mesh = jax.make_mesh((4, 2), ("fsdp", "tp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), case.specs())
  params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), case.host_tree(0), shardings)
  target = {"params": params, "state": optax_mini.abstract_state(case.make_tx(), params)}
  restored = ocp.StandardCheckpointer().restore(tmp_path / "checkpoint", target)
  flat = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(restored)[0]}
  assert_close(flat, reference)
  nu = restored["state"][1][0].nu
  assert nu["self_attn"]["q_proj"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("tp")
