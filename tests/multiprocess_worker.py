"""One process of the two-process test (test_multiprocess.py).

Usage: python multiprocess_worker.py PROCESS_ID PORT OUT_DIR. Each process has 4 CPU
devices; together they form one global ("fsdp", "tp") = (4, 2) mesh joined by
``jax.distributed.initialize`` with gloo CPU collectives. Both run the same
sharded Adam-mini updates, save the state with orbax (each process writes its
shards), and process 0 writes the gathered parameters and state to
OUT_DIR/result.npz.
"""

from __future__ import annotations

import os
import sys


def main(process_id: int, port: int, out_dir: str) -> None:
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  import jax

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
  import numpy as np
  import orbax.checkpoint as ocp
  from jax.experimental import multihost_utils
  from jax.sharding import NamedSharding

  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import multiprocess_case as case

  assert jax.process_count() == 2 and len(jax.devices()) == 8, (jax.process_count(), jax.devices())
  mesh = jax.make_mesh((4, 2), ("fsdp", "tp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), case.specs())

  def global_array(host, sharding):
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  def put(tree):
    return jax.tree.map(global_array, tree, shardings)

  tx = case.make_tx()
  params = put(case.host_tree(0))
  state_shardings = __import__("optax_mini").state_shardings(tx, params)
  state = jax.jit(tx.init, out_shardings=state_shardings)(params)
  step = jax.jit(case.apply, static_argnums=0, out_shardings=(shardings, state_shardings))
  for t in range(case.STEPS):
    params, state = step(tx, params, state, put(case.host_tree(100 + t)))

  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(out_dir, "checkpoint"), {"params": params, "state": state})
  checkpointer.wait_until_finished()

  gathered = multihost_utils.process_allgather({"params": params, "state": state}, tiled=True)
  if process_id == 0:
    flat = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(gathered)[0]}
    np.savez(os.path.join(out_dir, "result.npz"), **flat)
  multihost_utils.sync_global_devices("done")
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
