"""Haliax interop: what each axis of a named parameter is, from the model.

Levanter's models (Llama, Mistral, Gemma, Qwen, OLMo, Mixtral, GPT-2) are
built from ``haliax`` modules whose parameters are ``NamedArray`` s, and their
layouts follow no one library's convention: ``hnn.Linear`` stores its weight
``[Out..., In...]`` or ``[In..., Out...]`` (``out_first``) with the query's
``Out`` split into ``(kv_heads, q_heads_per_group, head_size)``, and
``hnn.Stacked`` adds the layer axis in front of every leaf. The tree itself
says what each axis is: a ``Linear`` keeps its ``In`` and ``Out`` axes as
static fields, a ``Stacked`` its ``Block`` axis, and every ``NamedArray`` the
names of its axes. :func:`axis_names` reads that, so the partition follows
the model instead of a guess from the shape.

Nothing here imports haliax: a tree can hold ``NamedArray`` s only if the
user imported it, so ``sys.modules`` is asked, and trees without it cost one
lookup.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax

from optax_mini import _named

#: Axis kinds: an input of the module's weight (averaged by every kernel
#: role), an output (kept by neuron, value and token roles; by name, heads),
#: a copy of the whole module (the layer axis of an ``hnn.Stacked``, the
#: experts of an ``hnn.MoELinear``: always kept, like ``BlockRules.stacked``),
#: or not known (a ``NamedArray`` outside such a module).
IN, OUT, STACK, UNKNOWN = "in", "out", "stack", ""


class AxisNames(NamedTuple):
  """One leaf's axes as its ``NamedArray`` names them.

  Attributes:
    names: each axis's name.
    kinds: each axis's kind: :data:`IN`, :data:`OUT`, :data:`STACK` or
      :data:`UNKNOWN`.
    module: the class of the module that owns the weight (``"Linear"``) when
      its ``In``/``Out`` say which axes are which, else ``""``.
    source: the library whose array it is: ``"haliax"``, or ``"penzai"``
      (``optax_mini._penzai``: names only, the kinds unknown).
  """

  names: tuple[str, ...]
  kinds: tuple[str, ...]
  module: str = ""
  source: str = "haliax"


def _haliax() -> Any:
  return sys.modules.get("haliax")


def _spec_names(spec: Any) -> tuple[str, ...]:
  """The axis names of a haliax ``AxisSpec``/``AxisSelection`` (an
  ``Axis``, a name, a mapping of names to sizes, or a sequence of those)."""
  if spec is None:
    return ()
  if isinstance(spec, str):
    return (spec,)
  name = getattr(spec, "name", None)
  if isinstance(name, str):
    return (name,)
  if isinstance(spec, Mapping):
    return tuple(str(k) for k in spec)
  if isinstance(spec, Sequence):
    return tuple(n for item in spec for n in _spec_names(item))
  return ()


def _is_named_module(x: Any) -> bool:
  """A module whose ``weight`` is a ``NamedArray`` and whose static ``In``
  and ``Out`` name its axes: ``hnn.Linear``, ``hnn.MoELinear``,
  ``hnn.Conv`` and modules written like them."""
  haliax = _haliax()
  return (
      haliax is not None
      and isinstance(getattr(x, "weight", None), haliax.NamedArray)
      and hasattr(x, "In")
      and hasattr(x, "Out")
  )


def _is_stacked(x: Any) -> bool:
  """An ``hnn.Stacked`` (or a module like it): its ``stacked`` member holds
  every layer's parameters with the ``Block`` axis added."""
  haliax = _haliax()
  return (
      haliax is not None
      and hasattr(x, "stacked")
      and isinstance(getattr(x, "Block", None), haliax.Axis)
  )


def axis_names(tree: Any) -> tuple[AxisNames | None, ...] | None:
  """The :class:`AxisNames` of each leaf of ``tree``, in
  ``jax.tree_util.tree_leaves`` order (``None`` for a leaf that is not a
  ``NamedArray``'s array); ``None`` if the tree holds no ``NamedArray``.

  Example (with haliax installed):
    >>> import haliax as hax, haliax.nn as hnn, jax, jax.numpy as jnp
    >>> from optax_mini import _haliax
    >>> Embed, Mlp = hax.Axis("embed", 8), hax.Axis("mlp", 16)
    >>> up = hnn.Linear.init(In=Embed, Out=Mlp, key=jax.random.key(0))
    >>> _haliax.axis_names(up)[0]  # its weight, [Out, In] (out_first)
    AxisNames(names=('mlp', 'embed'), kinds=('out', 'in'), module='Linear', source='haliax')
  """
  haliax = _haliax()
  if haliax is None:
    return None
  is_named = lambda x: isinstance(x, haliax.NamedArray)  # noqa: E731
  named = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_named)[0]
  if not any(is_named(x) for _, x in named):
    return None
  # Where each NamedArray's array leaf sits, and the facts known about it.
  facts: dict[tuple[Any, ...], dict[str, Any]] = {}
  for path, x in named:
    if is_named(x):
      for sub, _ in jax.tree_util.tree_flatten_with_path(x)[0]:
        facts[tuple(path) + tuple(sub)] = {"array": x, "stack": set()}
  for path, module in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_named_module)[0]:
    if not _is_named_module(module):
      continue
    inputs = set(_spec_names(module.In)) | set(_spec_names(getattr(module, "Spatial", None)))
    outputs = set(_spec_names(module.Out))
    copies = set(_spec_names(getattr(module, "Experts", None)))
    for sub, _ in jax.tree_util.tree_flatten_with_path(module.weight)[0]:
      key = tuple(path) + (jax.tree_util.GetAttrKey("weight"),) + tuple(sub)
      if key in facts:
        facts[key].update(inputs=inputs, outputs=outputs, copies=copies,
                          module=type(module).__name__)
  _mark_stacks(tree, (), facts)
  out: list[AxisNames | None] = []
  for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
    fact = facts.get(tuple(path))
    out.append(None if fact is None else _describe(fact))
  return tuple(out)


def _mark_stacks(tree: Any, prefix: tuple[Any, ...], facts: dict) -> None:
  """Adds each enclosing ``Stacked``'s ``Block`` name to the leaves under it
  (nested stacks too)."""
  for path, node in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_stacked)[0]:
    if not _is_stacked(node):
      continue
    here = prefix + tuple(path)
    inner = here + (jax.tree_util.GetAttrKey("stacked"),)
    for key, fact in facts.items():
      if key[: len(inner)] == inner:
        fact["stack"].add(node.Block.name)
    _mark_stacks(node.stacked, inner, facts)


def _describe(fact: dict[str, Any]) -> AxisNames:
  names = tuple(axis.name for axis in fact["array"].axes)
  module = fact.get("module", "")
  kinds = []
  for name in names:
    if name in fact["stack"] or name in fact.get("copies", ()):
      kinds.append(STACK)
    elif module and name in fact["outputs"]:
      kinds.append(OUT)
    elif module and name in fact["inputs"]:
      kinds.append(IN)
    else:
      kinds.append(UNKNOWN)
  return AxisNames(names, tuple(kinds), module)


# ----------------------------------------------------------------------------
# The state: named like the parameters, so that haliax can shard it


def strip(tree: Any) -> Any:
  """``tree`` with each ``NamedArray`` replaced by its array (the state's
  ``v`` and block scales are named with other axes than their parameter's,
  so the update matches state to gradients without the names)."""
  haliax = _haliax()
  if haliax is None:
    return tree
  is_named = lambda x: isinstance(x, haliax.NamedArray)  # noqa: E731
  return jax.tree_util.tree_map(lambda x: x.array if is_named(x) else x, tree, is_leaf=is_named)


def describe_state(params: Any, tree: Any, v_axes: Sequence[Sequence[int]] | None = None) -> Any:
  """``tree`` (one state entry per leaf of ``params``, in the structure of
  ``strip(params)``) with each entry of a ``NamedArray`` parameter named.

  ``m`` (``v_axes=None``) takes its parameter's axes; an int8 ``m``'s codes
  do too, and its block scales the same names with the last axis of
  ``num_blocks``, renamed ``<name>_blocks`` where the current haliax axis
  mapping splits that axis into other than whole blocks (so that
  ``haliax.partitioning.infer_resource_partitions``, which Levanter's
  trainer shards the state with, gives every array a spec it can take).
  ``v`` keeps the names of the axes it keeps (``v_axes[i]``, the parameter
  axes of the ``i``-th leaf's ``v``), with ``v``'s sizes. Trees of
  parameters without ``NamedArray`` s are returned as they are.
  """
  haliax = _haliax()
  if haliax is None:
    return tree
  def name(axes: tuple[Any, ...], index: int, entry: Any) -> Any:
    if v_axes is not None:
      return haliax.NamedArray(entry, _resized([axes[a] for a in v_axes[index]], entry.shape))
    if hasattr(entry, "codes") and hasattr(entry, "scales"):  # an int8 m
      return entry._replace(
          codes=haliax.NamedArray(entry.codes, axes),
          scales=haliax.NamedArray(entry.scales, _scales_axes(haliax, axes, entry.scales.shape)),
      )
    return haliax.NamedArray(entry, axes)

  return _named.name_entries(
      params,
      tree,
      lambda x: isinstance(x, haliax.NamedArray),
      # A NamedArray whose array was filtered out (eqx.filter) holds no leaf.
      lambda x: None if x.array is None else tuple(x.axes),
      name,
  )


def like(old: Any, new: Any) -> Any:
  """``new``'s arrays in ``old``'s tree structure: a state entry computed
  without names (:func:`strip`) handed back named as it came in."""
  return jax.tree_util.tree_unflatten(
      jax.tree_util.tree_structure(old), jax.tree_util.tree_leaves(new)
  )


def _resized(axes: Sequence[Any], shape: Sequence[int]) -> tuple[Any, ...]:
  """``axes`` with ``shape``'s sizes (a split head axis keeps its heads)."""
  return tuple(a if a.size == n else a.resize(n) for a, n in zip(axes, shape, strict=True))


def _scales_axes(haliax: Any, axes: Sequence[Any], shape: Sequence[int]) -> tuple[Any, ...]:
  last, num_blocks = axes[-1], shape[-1]
  try:
    shards = haliax.partitioning.physical_axis_size(last)
  except Exception:  # noqa: BLE001 (no mapping or mesh in context: nothing to split)
    shards = None
  name = last.name if not shards or num_blocks % shards == 0 else f"{last.name}_blocks"
  return _resized(tuple(axes[:-1]) + (haliax.Axis(name, num_blocks),), shape)
