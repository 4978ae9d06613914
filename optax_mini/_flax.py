"""Flax interop: reduced state that describes its own sharding.

``nnx.Optimizer`` hands ``init`` an ``nnx.State`` of ``Variable`` s, and
``jax.tree`` functions rebuild every state leaf inside a copy of its
parameter's ``Variable``, metadata included. For ``mu`` that is right (it has
the parameter's shape); for Adam-mini's ``v`` it is not: its
``out_sharding`` would name the parameter's axes, and Flax's eager sharding
(and ``nnx.get_partition_spec``) would apply a spec of the wrong rank. Here
each ``v`` Variable gets the names of the axes it keeps instead, the same
spec :func:`optax_mini.state_shardings` gives; likewise the block scales of
an int8 ``m`` (:func:`describe_quantized`). Linen's partitioning boxes
(``nn.with_partitioning``, ``nn.with_logical_partitioning``: the parameters
``TrainState.create`` hands ``tx.init`` in Flax's Linen sharding recipe, whose
shardings come from ``nn.get_sharding`` of the state) are re-named the same
way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec


def _is_variable(x: Any) -> bool:
  try:
    from flax import nnx
  except ImportError:  # flax is optional
    return False
  return isinstance(x, nnx.Variable)


def _is_box(x: Any) -> bool:
  """A Linen partitioning box (``nn.with_partitioning``'s ``Partitioned``,
  ``nn.with_logical_partitioning``'s ``LogicallyPartitioned``): its ``names``
  name each axis of the array it holds."""
  try:
    from flax.core import meta
  except ImportError:  # flax is optional
    return False
  return isinstance(x, meta.Partitioned)


def _is_described(x: Any) -> bool:
  return _is_variable(x) or _is_box(x)


def unbox(tree: Any) -> Any:
  """``tree`` with Linen's partitioning boxes replaced by their arrays (the
  state's ``v`` is boxed with other names than its gradient)."""
  if not any(_is_box(x) for x in jax.tree_util.tree_leaves(tree, is_leaf=_is_box)):
    return tree
  return jax.tree_util.tree_map(lambda x: x.value if _is_box(x) else x, tree, is_leaf=_is_box)


def strip_variables(tree: Any) -> Any:
  """``tree`` with each Flax NNX ``Variable`` replaced by its value, the
  containers (an ``nnx.State``) kept: the state's ``v`` Variables name other
  axes than the gradients' (a ``TrainState`` over ``nnx.split``'s params,
  maxdiffusion's WAN trainer), so the two are matched without them."""
  leaves = jax.tree_util.tree_leaves(tree, is_leaf=_is_variable)
  if not any(_is_variable(x) for x in leaves):
    return tree
  return jax.tree_util.tree_map(
      lambda x: x.get_value() if _is_variable(x) else x, tree, is_leaf=_is_variable
  )


def as_arrays(tree: Any) -> Any:
  """``tree`` with Flax NNX variables (an ``nnx.Optimizer``'s ``opt_state``,
  ``nnx.state(model, nnx.Param)``) replaced by their arrays; other trees as
  they are."""
  try:
    from flax import nnx
  except ImportError:  # flax is optional
    return tree
  if hasattr(nnx, "as_pure"):
    return nnx.as_pure(tree)
  # flax 0.11-0.12.0 have no as_pure.
  return jax.tree.map(lambda x: x.get_value() if _is_variable(x) else x, tree, is_leaf=_is_variable)


def _kept(names: Any, kept_axes: Sequence[int], ndim: int) -> Any:
  if isinstance(names, NamedSharding):
    return NamedSharding(names.mesh, _kept(names.spec, kept_axes, ndim))
  entries = tuple(names) + (None,) * (ndim - len(tuple(names)))
  kept = tuple(entries[a] for a in kept_axes)
  return PartitionSpec(*kept) if isinstance(names, PartitionSpec) else kept


def describe_kept_axes(
    tree: Any, kept_axes: Sequence[Sequence[int]], ndims: Sequence[int]
) -> Any:
  """Re-labels each ``Variable`` leaf of ``tree`` (a reduced state shaped like
  the parameters) with the sharding names of the parameter axes it keeps.

  ``kept_axes[i]`` are the parameter axes the ``i``-th leaf's array keeps, in
  order, and ``ndims[i]`` the parameter's rank. Trees without Variables are
  returned as they are.
  """
  leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=_is_described)
  if not any(_is_described(x) for x in leaves):
    return tree
  out = []
  for leaf, axes, ndim in zip(leaves, kept_axes, ndims, strict=True):
    if _is_box(leaf):
      out.append(leaf.replace(names=_kept(leaf.names, axes, ndim)))
      continue
    if not _is_variable(leaf):
      out.append(leaf)
      continue
    metadata = leaf.get_metadata()
    for key in ("out_sharding", "optimizer_sharding"):
      if metadata.get(key) is not None:
        metadata[key] = _kept(metadata[key], axes, ndim)
    out.append(type(leaf)(leaf.get_value(), **metadata))
  return jax.tree_util.tree_unflatten(treedef, out)


def _scales_names(names: Any, num_blocks: int, mesh: Any, ndim: int) -> Any:
  if isinstance(names, NamedSharding):
    return NamedSharding(names.mesh, _scales_names(names.spec, num_blocks, names.mesh, ndim))
  entries = tuple(names) + (None,) * (ndim - len(tuple(names)))
  last = entries[-1]
  if last is not None:
    axes = (last,) if isinstance(last, str) else tuple(last)
    sizes = dict(getattr(mesh, "shape", {}) or {})
    if not all(a in sizes for a in axes) or num_blocks % math.prod(sizes[a] for a in axes):
      entries = entries[:-1] + (None,)
  return PartitionSpec(*entries) if isinstance(names, PartitionSpec) else entries


def describe_quantized(tree: Any) -> Any:
  """Moves the ``Variable`` that wraps each int8 ``m``
  (:class:`~optax_mini.quantize.QuantizedMoment`) onto its two arrays, each
  with its own sharding names.

  Rebuilt in its parameter's ``Variable``, a quantized ``m`` would be placed
  with the parameter's spec as a whole: right for the codes (the parameter's
  shape), wrong for the scales ``[..., num_blocks]`` (a ``[512, 256]``
  embedding sharded ``("tp", "fsdp")`` has scales ``[512, 1]``, which cannot
  be split 4 ways). The scales keep the leading axes' names; their last
  (blocks) axis keeps its name only where the mesh splits it into whole
  blocks, as :func:`optax_mini.state_shardings` places them. Trees without
  Variables are returned as they are.
  """
  from optax_mini import quantize  # noqa: PLC0415 (quantize does not import this module)

  def move(leaf):
    if _is_box(leaf) and isinstance(leaf.value, quantize.QuantizedMoment):
      moment = leaf.value
      mesh = leaf.mesh or jax.sharding.get_abstract_mesh()
      names = _scales_names(leaf.names, moment.scales.shape[-1], mesh, moment.scales.ndim)
      return moment._replace(  # noqa: SLF001
          codes=leaf.replace(value=moment.codes), scales=leaf.replace(value=moment.scales, names=names)
      )
    if not _is_variable(leaf) or not isinstance(leaf.get_value(), quantize.QuantizedMoment):
      return leaf
    moment = leaf.get_value()
    metadata = leaf.get_metadata()
    scales_metadata = dict(metadata)
    ndim, num_blocks = moment.scales.ndim, moment.scales.shape[-1]
    mesh = metadata.get("mesh") or jax.sharding.get_abstract_mesh()
    for key in ("out_sharding", "optimizer_sharding"):
      if metadata.get(key) is not None:
        scales_metadata[key] = _scales_names(metadata[key], num_blocks, mesh, ndim)
    return moment._replace(  # noqa: SLF001
        codes=type(leaf)(moment.codes, **metadata),
        scales=type(leaf)(moment.scales, **scales_metadata),
    )

  return jax.tree_util.tree_map(move, tree, is_leaf=_is_described)
