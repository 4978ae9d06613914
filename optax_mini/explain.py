"""``explain``: the partition and the memory it saves, as a table."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_mini import alias
from optax_mini import blocks as blocks_lib

__all__ = ["BlockRow", "PartitionReport", "explain", "state_bytes"]


@dataclasses.dataclass(frozen=True)
class BlockRow:
  """One parameter leaf in a :class:`PartitionReport`."""

  path: str
  shape: tuple[int, ...]
  dtype: str
  role: str
  averaged_axes: str
  v_shape: tuple[int, ...]
  num_blocks: int
  block_size: int
  decayed: bool


@dataclasses.dataclass(frozen=True)
class PartitionReport:
  """What :func:`explain` found; ``str()`` renders it as a table.

  Attributes:
    rows: one :class:`BlockRow` per parameter leaf, in tree order.
    num_params: number of parameters.
    num_v: number of blocks, i.e. of distinct second-moment values
      (learning rates). ``v`` stores exactly these, except that a fused
      kernel's query/key parts repeat each head's value over its ``head_dim``
      (so that ``v`` keeps the kernel's axes); the byte counts include that.
    adamw_bytes: bytes of ``optax.adamw``'s state for these parameters.
    adam_mini_bytes: bytes of :func:`optax_mini.adam_mini`'s state.
    adam_mini_mu_dtype_bytes: the same with ``mu_dtype`` (``None`` if not given).
    mu_dtype: the ``mu_dtype`` asked for, as a string, or ``None``.
  """

  rows: tuple[BlockRow, ...]
  num_params: int
  num_v: int
  adamw_bytes: int
  adam_mini_bytes: int
  adam_mini_mu_dtype_bytes: int | None
  mu_dtype: str | None

  @property
  def ratio(self) -> float:
    """Adam-mini's state bytes over AdamW's."""
    return self.adam_mini_bytes / self.adamw_bytes if self.adamw_bytes else float("nan")

  def __str__(self) -> str:
    header = ("path", "shape", "role [rule]", "averaged axes", "v shape", "blocks", "decay")
    body = [
        (
            r.path,
            _shape_str(r.shape),
            r.role,
            r.averaged_axes,
            _shape_str(r.v_shape),
            f"{r.num_blocks:,}",
            "on" if r.decayed else "off",
        )
        for r in self.rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt = lambda row: "  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()  # noqa: E731
    lines = [fmt(header), fmt(tuple("-" * w for w in widths))]
    lines += [fmt(row) for row in body]
    removed = 100.0 * (1 - self.num_v / self.num_params) if self.num_params else 0.0
    lines += [
        "",
        f"parameters:        {self.num_params:,}",
        f"v entries:         {self.num_v:,}  ({removed:.3f}% of Adam's v removed)",
        f"optax.adamw state: {_bytes_str(self.adamw_bytes)}",
        f"adam_mini state:   {_bytes_str(self.adam_mini_bytes)}"
        f"  ({self.ratio:.3f}x adamw, {100 * (1 - self.ratio):.1f}% saved)",
    ]
    if self.adam_mini_mu_dtype_bytes is not None:
      r = self.adam_mini_mu_dtype_bytes / self.adamw_bytes
      lines.append(
          f"  with mu_dtype={self.mu_dtype}: {_bytes_str(self.adam_mini_mu_dtype_bytes)}"
          f"  ({r:.3f}x adamw, {100 * (1 - r):.1f}% saved)"
      )
    return "\n".join(lines)


def _averaged_axes(spec: blocks_lib.BlockSpec, ndim: int) -> str:
  """``(0, 1/64)``: axes 0 and, in heads of 64, axis 1. A fused kernel lists
  its parts: ``q (1, 3) | k (1, 3) | v (1)``."""

  def text(axes, head=None):
    items = [str(a % ndim) for a in sorted(a % ndim for a in axes)]
    if head is not None:
      items.append(f"{head[0] % ndim}/{head[1]}")
    return "(" + ", ".join(items) + ")" if items else "-"

  if not spec.parts:
    head = None if spec.head_axis is None else (spec.head_axis, spec.head_dim)
    return text(spec.reduce_axes, head)
  return " | ".join(
      f"{part.name} "
      + text(
          spec.reduce_axes + part.reduce_axes,
          None if part.head_dim is None else (spec.part_axis, part.head_dim),
      )
      for part in spec.parts
  )


def _shape_str(shape: tuple[int, ...]) -> str:
  return "[" + ", ".join(str(d) for d in shape) + "]"


def _bytes_str(n: int) -> str:
  for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
    if n >= size:
      return f"{n / size:,.2f} {unit} ({n:,} bytes)"
  return f"{n:,} bytes"


def state_bytes(tx: optax.GradientTransformation, params: Any) -> int:
  """Exact bytes of ``tx.init(params)``, from shapes only (``jax.eval_shape``).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from optax_mini import state_bytes
    >>> params = {"w": jax.ShapeDtypeStruct((1000, 1000), jnp.float32)}
    >>> state_bytes(optax.adamw(1e-3), params)  # m and v, plus an int32 count
    8000004
  """
  shapes = jax.eval_shape(tx.init, params)
  return sum(
      math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(shapes)
  )


def explain(
    params: Any,
    *,
    head_dim: blocks_lib.HeadDim = None,
    blocks: blocks_lib.Blocks = None,
    mask: Union[Any, Callable[[Any], Any]] | None = None,
    mu_dtype: Any | None = None,
) -> PartitionReport:
  """Reports how Adam-mini partitions ``params`` and what it saves.

  Needs shapes only: ``params`` may hold ``jax.ShapeDtypeStruct`` (e.g. from
  ``jax.eval_shape(model.init, ...)``), so a 7B model costs nothing.

  Args:
    params: the parameter pytree (or its shapes).
    head_dim: as in :func:`optax_mini.adam_mini`.
    blocks: as in :func:`optax_mini.adam_mini`.
    mask: the weight-decay mask, as in :func:`optax_mini.adam_mini`.
    mu_dtype: also report the state with this first-moment dtype
      (``jnp.bfloat16``, or ``jnp.int8`` for the block-quantized moment of
      :mod:`optax_mini.quantize`: codes plus float32 block scales).

  Returns:
    A :class:`PartitionReport`; print it for the table.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_mini
    >>> params = {"embed_tokens": {"embedding": jnp.zeros((256, 16))},
    ...           "q_proj": {"kernel": jnp.zeros((16, 16))},
    ...           "norm": {"scale": jnp.zeros(16)}}
    >>> report = optax_mini.explain(params, head_dim=4)
    >>> [(r.path, r.v_shape) for r in report.rows]
    [("['embed_tokens']['embedding']", (256,)), ("['norm']['scale']", ()), ("['q_proj']['kernel']", (4,))]
    >>> report.num_v
    261
  """
  specs = blocks_lib.block_specs(params, head_dim=head_dim, blocks=blocks)
  if mask is None:
    mask = functools.partial(alias.default_weight_decay_mask, head_dim=head_dim, blocks=blocks)
  decay = mask(params) if callable(mask) else mask
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths, _ = blocks_lib.leaf_paths(params, tuple(p for p, _ in leaves_with_path))
  spec_leaves = treedef.flatten_up_to(specs)
  decay_leaves = treedef.flatten_up_to(decay)
  rows = []
  for path, (_, leaf), spec, decayed in zip(paths, leaves_with_path, spec_leaves, decay_leaves):
    shape = tuple(int(d) for d in np.shape(leaf))
    layout = spec.layout(shape)
    averaged_text = _averaged_axes(spec, len(shape))
    rows.append(
        BlockRow(
            path=blocks_lib.path_str(path),
            shape=shape,
            dtype=str(jnp.dtype(leaf.dtype)),
            role=spec.role,
            averaged_axes=averaged_text,
            v_shape=layout.v_shape,
            num_blocks=layout.num_blocks,
            block_size=layout.block_size,
            decayed=bool(decayed),
        )
    )
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), params)
  adamw_bytes = state_bytes(optax.adamw(1e-3), abstract)
  mini = lambda mu: alias.adam_mini(1e-3, head_dim=head_dim, blocks=blocks, mu_dtype=mu)  # noqa: E731
  mini_bytes = state_bytes(mini(None), abstract)
  mu_bytes = state_bytes(mini(mu_dtype), abstract) if mu_dtype is not None else None
  return PartitionReport(
      rows=tuple(rows),
      num_params=sum(math.prod(r.shape) for r in rows),
      num_v=sum(r.num_blocks for r in rows),
      adamw_bytes=adamw_bytes,
      adam_mini_bytes=mini_bytes,
      adam_mini_mu_dtype_bytes=mu_bytes,
      mu_dtype=None if mu_dtype is None else str(jnp.dtype(mu_dtype)),
  )

