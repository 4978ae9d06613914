"""Naming state entries as their parameters: the walk haliax and penzai share.

A library that names array axes (haliax's and penzai's ``NamedArray``) wraps
each parameter's array in a node. The update runs on the arrays alone (each
library's ``strip``), so each state entry (``m``, ``v``, an int8 ``m``'s codes
and scales) comes out plain, one per leaf of the stripped parameters; this
walks the parameters beside those entries and hands each entry of a named
parameter to the library's own namer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax


class _Marked:
  """What a named parameter's node says about its axes: a leaf while walking."""

  __slots__ = ("value",)

  def __init__(self, value: Any):
    self.value = value


_PLAIN = object()  # a leaf that is no named parameter


def name_entries(
    params: Any,
    tree: Any,
    is_named: Callable[[Any], bool],
    mark: Callable[[Any], Any],
    namer: Callable[[Any, int, Any], Any],
) -> Any:
  """``tree`` (one entry per leaf of the stripped ``params``) with the entry
  of each named parameter ``x`` replaced by ``namer(mark(x), i, entry)``,
  ``i`` its leaf's index in ``params``' leaves. ``mark`` returns ``None``
  for a named node that holds no array (a filtered-out one): it has no
  entry. Without named parameters, ``tree`` is returned as it is."""
  marked = jax.tree_util.tree_map(
      lambda x: (None if (v := mark(x)) is None else _Marked(v)) if is_named(x) else _PLAIN,
      params,
      is_leaf=is_named,
  )
  is_mark = lambda x: isinstance(x, _Marked) or x is _PLAIN  # noqa: E731
  marks = jax.tree_util.tree_leaves(marked, is_leaf=is_mark)
  if not any(isinstance(m, _Marked) for m in marks):
    return tree
  index = iter(range(len(marks)))

  def name(m: Any, entry: Any) -> Any:
    i = next(index)
    return namer(m.value, i, entry) if isinstance(m, _Marked) else entry

  return jax.tree_util.tree_map(name, marked, tree, is_leaf=is_mark)
