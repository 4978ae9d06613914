"""7. Per-device optimizer state under FSDP."""

from __future__ import annotations

import jax
import matplotlib

from benchmarks import shapes as shapes_lib
from benchmarks.common import (
  GB,
  optimizers,
  state_bytes_per_device,
  table,
)

matplotlib.use("Agg")


# --------------------------------------------------------------------------- 7. FSDP


def fsdp_spec(shape: tuple[int, ...], n: int) -> jax.sharding.PartitionSpec:
  """FSDP: shard the first axis the mesh size divides (kernels: the input axis)."""
  spec: list[str | None] = [None] * len(shape)
  for axis, size in enumerate(shape):
    if size % n == 0:
      spec[axis] = "fsdp"
      break
  return jax.sharding.PartitionSpec(*spec)


def section(quick: bool) -> str:
  del quick
  from jax.sharding import AbstractMesh, AxisType, NamedSharding

  config = shapes_lib.LLAMA2_7B
  rows = []
  for n in (8, 64, 256):
    mesh = AbstractMesh((n,), ("fsdp",), axis_types=(AxisType.Explicit,))
    params = jax.tree.map(
        lambda x, mesh=mesh, n=n: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=NamedSharding(mesh, fsdp_spec(x.shape, n))),
        shapes_lib.param_shapes(config))
    row = [str(n), f"{state_bytes_per_device(params) / GB:.3f}"]
    per = {}
    for name in ("adamw", "adam_mini", "adam_mini (bf16 m)"):
      tx = optimizers(config.head_dim)[name]
      with jax.sharding.use_abstract_mesh(mesh):
        state = jax.eval_shape(tx.init, params)
      per[name] = state_bytes_per_device(state)
      if name == "adam_mini":
        v_bytes = state_bytes_per_device(state[0].nu)
      row.append(f"{per[name] / GB:.3f}")
    row.append(f"{per['adam_mini'] / per['adamw']:.3f}x")
    row.append(f"{v_bytes / 1e6:.1f}")
    rows.append(row)
  return "\n\n".join([
      "## 7. Per-device optimizer state at Llama-2-7B shapes under FSDP (issue 4)",
      "Shapes only: parameters as `jax.ShapeDtypeStruct` with `NamedSharding` on a "
      "`jax.sharding.AbstractMesh((n,), ('fsdp',), axis_types=Explicit)` (no devices "
      "needed), each leaf sharded on its first axis that n divides (kernels: the input "
      "axis; embedding: vocab); `jax.eval_shape(tx.init, params)` under "
      "`jax.sharding.use_abstract_mesh`, then `sharding.shard_shape` per leaf. Adam-mini's "
      "v follows the kept axes (sharding in types), so v of input-sharded kernels is "
      "replicated (last column).",
      table(["FSDP devices", "params GB/device", "adamw GB/device", "adam_mini GB/device",
             "adam_mini bf16 m GB/device", "adam_mini / adamw", "adam_mini v MB/device"], rows),
  ])
