"""Optimizer-state shardings from parameter shardings.

Under ``jit`` with sharded parameters Adam-mini needs nothing: it sees global
arrays, and its reduced state is built from ``jax.eval_shape`` of the block
reduction, so under sharding-in-types each ``v`` is sharded along the axes it
keeps. :func:`state_shardings` gives those shardings up front, for
``jax.jit(tx.init, out_shardings=...)``, orbax restore targets and abstract
initialisation, on ``Auto`` meshes too.
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = ["state_shardings", "abstract_state"]


def _mesh_of(shardings: list[Any]) -> Mesh | None:
  meshes = {s.mesh for s in shardings if isinstance(s, NamedSharding)}
  if len(meshes) > 1:
    raise ValueError(
        "state_shardings: the parameters are sharded over more than one mesh "
        f"({len(meshes)}); put them on one jax.sharding.Mesh."
    )
  return next(iter(meshes), None)


def _explicit(mesh: Mesh) -> Mesh:
  return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Explicit,) * len(mesh.axis_names))


def abstract_state(
    tx: optax.GradientTransformation, params: Any, shardings: Any = None
) -> Any:
  """``jax.eval_shape(tx.init, params)`` with the shardings a real update gives.

  Args:
    tx: any optax transformation (a chain containing Adam-mini, or not).
    params: the parameters, as arrays or ``jax.ShapeDtypeStruct``.
    shardings: a pytree of ``NamedSharding`` with the parameters' structure;
      ``None``: each leaf's own ``.sharding``.

  Returns:
    A pytree of ``jax.ShapeDtypeStruct`` shaped like ``tx.init(params)``, each
    with a ``NamedSharding`` on the parameters' mesh.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import NamedSharding, PartitionSpec as P
    >>> import optax_mini
    >>> mesh = jax.make_mesh((1,), ("fsdp",))
    >>> params = {"mlp": {"kernel": jax.ShapeDtypeStruct((8, 4), jnp.float32,
    ...     sharding=NamedSharding(mesh, P("fsdp", None)))}}
    >>> state = optax_mini.abstract_state(optax_mini.adam_mini(1e-3), params)
    >>> state[0].nu["mlp"]["kernel"].shape, state[0].nu["mlp"]["kernel"].sharding.spec
    ((4,), P(None,))
  """
  leaves, treedef = jax.tree.flatten(params)
  if shardings is None:
    sharding_leaves = [getattr(x, "sharding", None) for x in leaves]
  else:
    sharding_leaves = treedef.flatten_up_to(shardings)
  mesh = _mesh_of(sharding_leaves)
  if mesh is None:
    state = jax.eval_shape(tx.init, params)
    device = next((s for s in sharding_leaves if s is not None), None)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), state
    )
  # Trace init on an Explicit copy of the mesh: with sharding in types, every
  # state leaf's sharding follows from the parameters' (v: the axes it keeps).
  explicit = _explicit(mesh)

  def on_explicit(x, s):
    spec = s.spec if isinstance(s, NamedSharding) else PartitionSpec()
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(explicit, spec))

  abstract = treedef.unflatten([on_explicit(x, s) for x, s in zip(leaves, sharding_leaves)])
  with jax.set_mesh(explicit):
    state = jax.eval_shape(tx.init, abstract)

  def back(x):
    spec = x.sharding.spec if isinstance(x.sharding, NamedSharding) else PartitionSpec()
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))

  return jax.tree.map(back, state)


def state_shardings(
    tx: optax.GradientTransformation, params: Any, shardings: Any = None
) -> Any:
  """The optimizer state's shardings, given the parameters' shardings.

  ``mu`` gets its parameter's sharding, each ``v`` its parameter's sharding on
  the axes it keeps (reduced axes drop out), counts are replicated. Use it as
  ``jax.jit(tx.init, out_shardings=state_shardings(tx, params))``, as an
  orbax restore target, or to move a state onto another mesh.

  Args:
    tx: any optax transformation.
    params: the parameters (arrays or ``jax.ShapeDtypeStruct``).
    shardings: a pytree of ``NamedSharding`` with the parameters' structure;
      ``None``: each leaf's own ``.sharding``.

  Returns:
    A pytree of shardings with the structure of ``tx.init(params)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import NamedSharding, PartitionSpec as P
    >>> import optax_mini
    >>> mesh = jax.make_mesh((1, 1), ("fsdp", "tp"))
    >>> params = {"q_proj": {"kernel": jnp.zeros((8, 16))}}
    >>> shardings = {"q_proj": {"kernel": NamedSharding(mesh, P("fsdp", "tp"))}}
    >>> tx = optax_mini.adam_mini(1e-3, head_dim=4)
    >>> out = optax_mini.state_shardings(tx, params, shardings)
    >>> out[0].nu["q_proj"]["kernel"].spec  # one v per head, sharded like the heads
    P('tp',)
  """
  return jax.tree.map(lambda x: x.sharding, abstract_state(tx, params, shardings))
