"""``scale_by_adam_mini``: Adam's update with one second moment per block."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec
from optax._src import numerics, utils

from optax_mini import _flax, _haliax, _penzai
from optax_mini import blocks as blocks_lib
from optax_mini import quantize as quantize_lib

__all__ = ["ScaleByAdamMiniState", "scale_by_adam_mini"]


class ScaleByAdamMiniState(NamedTuple):
  """State of :func:`scale_by_adam_mini`.

  Attributes:
    count: number of updates so far, int32 scalar.
    mu: first moment, shaped like the parameters (dtype ``mu_dtype``); with
      ``mu_dtype=jnp.int8`` each leaf of at least 4096 elements is a
      :class:`~optax_mini.quantize.QuantizedMoment` (int8 codes and float32
      block scales) and smaller ones are float32.
    nu: second moment, one float32 entry per block: each leaf has the
      ``v_shape`` of its :class:`~optax_mini.BlockSpec` (float64 for float64
      parameters).
  """

  count: jax.typing.ArrayLike
  mu: optax.Updates
  nu: optax.Updates


def _v_dtype(dtype: Any) -> jnp.dtype:
  # v is tiny, so it is kept at >= float32 whatever the parameter dtype (the
  # official 1.1.1 uses the parameter dtype, a complaint for bf16: upstream #26).
  real = jnp.finfo(jnp.promote_types(dtype, jnp.float32)).dtype
  return jnp.dtype(real)


def _compute_dtype(dtype: Any) -> jnp.dtype:
  return jnp.promote_types(dtype, jnp.float32)


def check_hyperparameter(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    allow_callable: bool = False,
) -> None:
  """Checks a concrete hyper-parameter: a real number (or array of them) in
  ``[low, high)`` (``None``: no bound on that side). Traced values, as under
  ``optax.inject_hyperparams`` inside ``jit``, are not checked; callables
  (schedules) pass where ``allow_callable``.

  Raises:
    TypeError: naming the argument, for a value that is not a number.
    ValueError: naming the argument, for a number out of range (or NaN).
  """
  if allow_callable and callable(value):
    return
  try:
    array = np.asarray(value)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return
  except (TypeError, ValueError):
    array = np.asarray(None)
  if high is not None:
    expected = f"a real number in [{low}, {high})"
  else:
    expected = "a real number" + (f" >= {low}" if low is not None else "")
  if allow_callable:
    expected += ", an array of them, or a schedule (a callable of the step count)"
  if array.dtype.kind not in "iuf" or isinstance(value, bool):
    raise TypeError(f"{name} must be {expected}; got {value!r} of type {type(value).__name__}.")
  ok = not np.any(np.isnan(array))
  ok = ok and (low is None or np.all(array >= low)) and (high is None or np.all(array < high))
  if not ok:
    raise ValueError(f"{name}={value!r} is out of range: expected {expected}.")


def _is_int8(mu_dtype: Any) -> bool:
  return mu_dtype is not None and jnp.dtype(mu_dtype) == jnp.int8


def _check_mu_dtype(mu_dtype: Any, mu_code: str) -> None:
  if mu_dtype is not None and not (jnp.issubdtype(mu_dtype, jnp.inexact) or _is_int8(mu_dtype)):
    raise ValueError(
        f"mu_dtype={jnp.dtype(mu_dtype)} is neither a floating-point dtype nor int8: cast to "
        "it, every momentum would round to 0 and nothing would train. Use jnp.int8 for the "
        "block-quantized 8-bit first moment (an eighth of AdamW's state), or a float dtype "
        "(jnp.float32, or jnp.bfloat16 for a quarter)."
    )
  if mu_dtype is not None and jnp.issubdtype(mu_dtype, jnp.floating):
    info = jnp.finfo(mu_dtype)
    if info.bits < 16:
      # Unscaled, an 8-bit float rounds a momentum of 1e-4 to 0 (e4m3fn's
      # smallest value is 2**-9) or keeps 2 bits of it (e5m2).
      raise ValueError(
          f"mu_dtype={jnp.dtype(mu_dtype)}: an unscaled {info.bits}-bit float cannot hold the "
          f"first moment (its smallest nonzero value is {float(info.smallest_subnormal):.3g}, "
          f"its mantissa {info.nmant} bits; momenta are often 1e-4 and below), so most "
          "momenta would round to 0 or lose all precision. Use jnp.int8 for the "
          "block-quantized 8-bit first moment (one float32 scale per block), or "
          "jnp.bfloat16."
      )
  if mu_code not in quantize_lib.CODES:
    raise ValueError(f"mu_code={mu_code!r}: expected one of {quantize_lib.CODES}.")


class _Shard(NamedTuple):
  """Where a leaf's local array lies in the global one: inside ``shard_map``
  with ``partition_specs`` a shard, else the whole leaf."""

  global_shape: tuple[int, ...]
  offsets: tuple[Any, ...] | None  # traced start along each axis, or None
  block: int  # quantization block along the last axis (the global leaf's)
  quantized: bool  # mu_dtype=int8 quantizes this leaf (quantize.is_quantized)


def _shard_of(
    shape: tuple[int, ...], dtype: Any, stack_axes: tuple[int, ...], pspec: Any, where: str
) -> _Shard:
  entries = tuple(pspec) if pspec is not None else ()
  entries = entries + (None,) * (len(shape) - len(entries))
  names = [() if e is None else ((e,) if isinstance(e, str) else tuple(e)) for e in entries]
  if not any(names) or not _axes_bound(tuple(n for group in names for n in group)):
    return _Shard(
        tuple(shape), None, quantize_lib.block_size(shape[-1]) if shape else 1,
        quantize_lib.is_quantized(tuple(shape), dtype, stack_axes),
    )
  global_shape, offsets = [], []
  for size, group in zip(shape, names):
    count, index = 1, jnp.zeros([], jnp.int32)
    for name in group:  # major to minor, as PartitionSpec tuples mean
      index = index * jax.lax.axis_size(name) + jax.lax.axis_index(name)
      count *= jax.lax.axis_size(name)
    global_shape.append(size * count)
    offsets.append(index * size)
  block = quantize_lib.block_size(global_shape[-1])
  quantized = quantize_lib.is_quantized(tuple(global_shape), dtype, stack_axes)
  if shape[-1] % block and quantized:
    raise ValueError(
        f"{where}: partition spec {pspec} splits the last axis of this "
        f"{tuple(global_shape)} leaf into shards of {shape[-1]}, which is not a multiple of "
        f"mu_dtype=int8's quantization block ({block}): the shards' blocks would differ from "
        f"the global leaf's. Shard the last axis into multiples of {block} (or shard another axis)."
    )
  return _Shard(tuple(global_shape), tuple(offsets), block, quantized)


def _mu_zeros(leaf: Any, mu_dtype: Any, mu_code: str, shard: _Shard) -> Any:
  """A leaf's zero first moment: ``mu_dtype`` (the parameter's if ``None``);
  for int8, quantized codes and block scales, or float32 for a small leaf."""
  if not _is_int8(mu_dtype):
    return jnp.zeros_like(leaf, dtype=mu_dtype)
  if not shard.quantized:
    return jnp.zeros_like(leaf, dtype=_compute_dtype(leaf.dtype))
  # The scales' shape and sharding from eval_shape of the quantization
  # itself, as v's from its reduction (sharding in types).
  target = jax.eval_shape(lambda x: quantize_lib.quantize(x, mu_code, block=shard.block), leaf)
  return quantize_lib.QuantizedMoment(
      jnp.zeros_like(leaf, dtype=jnp.int8), jnp.zeros_like(target.scales), mu_code
  )


def _as_moment(mu: Any) -> Any:
  """``mu`` as stored; a quantized one that came back as a mapping (Flax NNX
  can rebuild pytree nodes inside an ``nnx.Optimizer``'s state as
  ``nnx.State``) as a :class:`~optax_mini.quantize.QuantizedMoment`, its code
  map read from its key (``power_codes``, ...)."""
  if isinstance(mu, Mapping):
    for code in quantize_lib.CODES:
      if set(mu.keys()) == {f"{code}_codes", "scales"}:
        return quantize_lib.QuantizedMoment(mu[f"{code}_codes"], mu["scales"], code)
  return mu


def _mu_shape(mu: Any) -> tuple[int, ...]:
  if isinstance(mu, quantize_lib.QuantizedMoment):
    return tuple(jnp.shape(mu.codes))
  return tuple(jnp.shape(mu))


def _check_inexact(path, leaf) -> None:
  if not jnp.issubdtype(leaf.dtype, jnp.inexact):
    raise ValueError(
        f"{blocks_lib.path_str(path)}: shape {tuple(leaf.shape)} has dtype "
        f"{leaf.dtype}; Adam-mini optimises floating-point (or complex) "
        "parameters only. Leave integer/boolean leaves out of the optimised "
        "tree (e.g. nnx.Optimizer(..., wrt=nnx.Param), or optax.masked / "
        "optax.set_to_zero for them)."
    )


def _mean_square(
    g: jax.Array,
    layout: blocks_lib.Layout,
    mesh_axes: tuple[str, ...] = (),
    weight: jax.typing.ArrayLike = 1.0,
) -> jax.Array:
  """``weight`` times the per-block mean of |g|^2, shaped ``layout.v_shape``.

  ``g * g`` overflows float32 for ``|g| > 1.8e19``, and the sum of a large
  block (a 16M-element ``value_as_one_block`` matrix) long before that, while
  ``weight * mean`` (``weight = 1 - b2``) may still be finite. So ``g`` is
  first scaled by a power of two ``s`` with ``s**2`` just below
  ``weight / n`` (``n`` elements per block): every term and partial sum then
  stays below the result, and the scaling is undone by powers of two, which
  is exact. The result is bit-identical to ``weight * mean(g * g)`` whenever
  that does not overflow (nor sink below float32's normal range, far below
  ``eps**2``), and the scaling fuses into the reduction: no extra pass over
  ``g``. An empty block (a zero-size axis) gives 0, not 0/0 = NaN.

  The scale passes through an ``optimization_barrier`` together with ``g``:
  without it XLA merges the identical scale constants of same-shaped leaves
  into one broadcast, which XLA:CPU then materialises as a full-size array
  read beside every such ``g`` (7.33 instead of 7 words per parameter, about
  10 % of the update time at 100M parameters; tests/test_hlo_passes.py).

  Inside ``shard_map`` a block may span shards: ``mesh_axes`` names the mesh
  axes its averaged axes are split over; shards are equal-sized, so the mean
  of the local means over them is the global mean.
  """
  n = max(layout.block_size, 1)
  try:  # a Python/NumPy number (b2 closed over): fold it into the scaling
    target = float(weight) / n
  except (TypeError, jax.errors.ConcretizationTypeError):
    target = 1.0 / n  # traced (inject_hyperparams): guard g * g only
  if not target > 0:
    target = 1.0 / n
  exponent = math.floor(math.log2(target) / 2)
  g = g.astype(_compute_dtype(g.dtype))
  if exponent:
    g, scale = jax.lax.optimization_barrier((g, jnp.asarray(2.0**exponent, g.dtype)))
    g = g * scale
  g2 = jnp.real(g * jnp.conj(g)) if jnp.iscomplexobj(g) else g * g
  total = _two_stage_sum(g2, layout)
  # One multiply undoes the scaling and divides by the block size (an empty
  # block's sum is 0, so no 0/0); a fused kernel's parts divided by their own.
  divisor = 1 if layout.parts else n
  mean = total * (jnp.asarray(weight, total.dtype) * (2.0 ** (-2 * exponent) / divisor))
  if mesh_axes:
    mean = jax.lax.pmean(mean, mesh_axes)
  return mean


# XLA:CPU sums over leading axes slowly once the kept trailing extent passes
# 64 kB (a [dim, 32000] lm_head: ~15x slower than the same bytes summed
# along rows; benchmarks/RESULTS.md). Pairwise halving (split, add) fuses
# into one contiguous loop there instead.
_CPU_WIDE_MINOR = 16384


def _two_stage_sum(g2: jax.Array, layout: blocks_lib.Layout) -> jax.Array:
  """The per-block sum of ``g2`` (the leaf's shape), shaped ``layout.v_shape``.

  The full-size array is summed in its own shape, over the axes averaged
  whole (``layout.shape_reduce``); only the v-sized result is reshaped to
  split heads and summed over ``head_dim``. XLA:CPU sums a reshaped
  full-size view (``[d, heads, head_dim]`` over axes 0 and 2, one fused
  reduction) at 2.6 GB/s where the plain column sum of ``[d, heads *
  head_dim]`` runs at 17 GB/s (a [4096, 4096] q kernel alone); inside a
  whole update the difference was within noise, but nothing is lost.
  """
  total = _block_sum(g2, layout.shape_reduce)
  if layout.parts:
    return _part_means(jax.lax.optimization_barrier(total), layout)
  if layout.rest_reduce:
    # Keeps the v-sized second stage out of the first stage's fusion.
    total = jax.lax.optimization_barrier(total)
    total = jnp.sum(total.reshape(layout.rest_view), axis=layout.rest_reduce)
  return total.reshape(layout.v_shape)


def _part_means(total: jax.Array, layout: blocks_lib.Layout) -> jax.Array:
  """A fused kernel's block means from its sums over the common axes.

  ``total`` is v-sized (the leaf less the axes every part averages). Each
  part is cut out along the part axis (per repeat), averaged over what only
  it averages (a query head's ``head_dim``), and broadcast back, so that ``v``
  keeps one shape for all parts.
  """
  axis, period = layout.part_axis, layout.part_period
  shape = total.shape
  repeats = shape[axis] // period
  x = total.reshape(shape[:axis] + (repeats, period) + shape[axis + 1 :])
  pieces = []
  for offset, size, head_dim, extra, block_size in layout.parts:
    piece = jax.lax.slice_in_dim(x, offset, offset + size, axis=axis + 1)
    sums = piece
    if extra:
      sums = jnp.sum(sums, axis=tuple(a + 1 if a > axis else a for a in extra), keepdims=True)
    if head_dim is not None:
      split = sums.shape[: axis + 1] + (size // head_dim, head_dim) + sums.shape[axis + 2 :]
      sums = jnp.sum(sums.reshape(split), axis=axis + 2, keepdims=True)
      sums = jnp.broadcast_to(sums, split).reshape(split[: axis + 1] + (size,) + split[axis + 3 :])
    pieces.append(jnp.broadcast_to(sums * (1.0 / max(block_size, 1)), piece.shape))
  return jnp.concatenate(pieces, axis=axis + 1).reshape(shape)


def _sharded_in_types(x: jax.Array, axes: tuple[int, ...]) -> bool:
  spec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", None)
  if spec is None:
    return False
  spec = tuple(spec)
  return any(axis < len(spec) and spec[axis] is not None for axis in axes)


def _block_sum(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """``jnp.sum(x, axes)``, with the fast formulation for wide kept rows on CPU."""
  if not axes:
    return x
  inner = math.prod(x.shape[max(axes) + 1 :])
  if inner <= _CPU_WIDE_MINOR or _sharded_in_types(x, axes):
    # Splitting an explicitly sharded axis is not supported (sharding in
    # types); the plain sum is, and sharded data is split over devices anyway.
    return jnp.sum(x, axis=axes)

  def halving(x):
    for axis in axes:
      while x.shape[axis] > 1 and x.shape[axis] % 2 == 0:
        low, high = jnp.split(x, 2, axis=axis)
        x = low + high
    return jnp.sum(x, axis=axes)

  return jax.lax.platform_dependent(x, cpu=halving, default=lambda x: jnp.sum(x, axis=axes))


def _reduced_mesh_axes(
    spec: blocks_lib.BlockSpec, ndim: int, pspec: Any, where: str
) -> tuple[str, ...]:
  """Mesh axes over which the averaged axes of a shard_map-local leaf are split."""
  if pspec is None:
    return ()
  entries = tuple(pspec)
  if len(entries) > ndim:
    raise ValueError(
        f"{where}: partition spec {pspec} has {len(entries)} entries but the leaf has "
        f"{ndim} axes. partition_specs= must be the PartitionSpecs the parameters "
        "are sharded with inside shard_map (its in_specs)."
    )
  entries = entries + (None,) * (ndim - len(entries))
  partial = sorted({a % ndim for part in spec.parts for a in part.reduce_axes})
  if any(entries[a] is not None for a in partial):
    raise ValueError(
        f"{where}: partition spec {pspec} shards axes {partial}, which only some parts "
        f"of this fused kernel ({', '.join(p.name for p in spec.parts)}) average, so no "
        "single pmean gives every part its global mean. Shard it along other axes "
        "inside shard_map, or update it under jit (which sees global arrays)."
    )
  reduced = {a % ndim for a in spec.reduce_axes}
  names: list[str] = []
  for axis in sorted(reduced):
    entry = entries[axis]
    if entry is None:
      continue
    for name in (entry,) if isinstance(entry, str) else tuple(entry):
      if name not in names:
        names.append(name)
  return tuple(names)


def _axes_bound(mesh_axes: tuple[str, ...]) -> bool:
  """Whether we are tracing inside a shard_map that binds these mesh axes."""
  try:
    for name in mesh_axes:
      jax.lax.axis_size(name)
  except NameError:
    return False
  return True


def _v_zeros(
    leaves: Sequence[Any], layouts: Sequence[blocks_lib.Layout], mesh_axes: Sequence[tuple[str, ...]]
) -> list[jax.Array]:
  """Each leaf's v, zeros.

  Built from eval_shape of the reduction itself so that, under a sharded
  (or sharding-in-types) jit, v carries the sharding a real update gives it
  (the adafactor recipe); one eval_shape for all leaves, not one each (a
  PyTorch MoE checkpoint has tens of thousands).
  Inside shard_map the pmean makes v invariant over the averaged mesh axes;
  tracing it here gives the zeros the same varying-axes type. Outside it
  (abstract init, state_shardings) the leaves are global: no pmean."""
  mesh_axes = [axes if _axes_bound(axes) else () for axes in mesh_axes]
  # The result's type is a function of the leaf's (shape, dtype, sharding,
  # varying mesh axes), its layout and the averaged axes: traced once for
  # each such kind of leaf (an MoE's experts share one).
  kinds: dict[Any, int] = {}
  of_leaf = []
  for leaf, layout, axes in zip(leaves, layouts, mesh_axes):
    try:
      key = (jax.typeof(leaf), layout, axes)
      of_leaf.append(kinds.setdefault(key, len(kinds)))
    except (TypeError, ValueError):  # no type, or an unhashable one: traced on its own
      of_leaf.append(kinds.setdefault(object(), len(kinds)))
  firsts = {}
  for index, kind in enumerate(of_leaf):
    firsts.setdefault(kind, index)
  firsts = list(firsts.values())

  def reduce(xs):
    return [
        _mean_square(x, layouts[i], mesh_axes[i]).astype(_v_dtype(x.dtype))
        for x, i in zip(xs, firsts)
    ]

  targets = jax.eval_shape(reduce, [leaves[i] for i in firsts])
  # One array each (a state's leaves may be donated).
  return [jnp.zeros_like(targets[kind]) for kind in of_leaf]


def scale_by_adam_mini(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: Any | None = None,
    *,
    head_dim: blocks_lib.HeadDim = None,
    blocks: blocks_lib.Blocks = None,
    partition_specs: Any = None,
    mu_code: str = quantize_lib.DEFAULT_CODE,
) -> optax.GradientTransformation:
  r"""Rescale updates by the Adam-mini algorithm.

  Adam with one second moment per *block* of parameters instead of one per
  parameter. For a leaf with gradient :math:`g_t` cut into blocks :math:`B`
  (see :mod:`optax_mini.blocks`),

  .. math::

    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
    v_{t,B} &= \beta_2 v_{t-1,B} + (1 - \beta_2)
      \tfrac{1}{|B|}\textstyle\sum_{i \in B} |g_{t,i}|^2 \\
    u_{t,i} &= \frac{m_{t,i} / (1 - \beta_1^t)}
      {\sqrt{v_{t,B(i)} / (1 - \beta_2^t) + \bar\varepsilon} + \varepsilon}

  which is :func:`optax.scale_by_adam` when every block is one element. Chain
  it like ``optax.scale_by_adam``; :func:`optax_mini.adam_mini` is the
  ready-made AdamW drop-in.

  Blocks are derived once per tree structure from the leaves' paths and shapes
  (a static decision at trace time): no per-step cost, no retracing. Each
  leaf's update is traced once per (shape, dtype, block layout) and reused
  for every leaf like it, so a deep model costs a handful of traces; the
  compiled update reads the gradient once for the block sums and otherwise
  streams only what Adam's first moment needs.

  Odd inputs:

  * Leaves must be floating-point or complex. Integer and boolean leaves (step
    counters, masks, RNG keys) raise a ``ValueError`` naming the leaf rather
    than being passed through silently: leave them out of the optimised tree
    (``nnx.Optimizer(..., wrt=nnx.Param)``, ``optax.masked``). ``None`` leaves
    and ``optax.MaskedNode`` (under ``optax.masked``) are empty subtrees and
    simply carried along.
  * Complex parameters keep a complex ``mu``; ``v`` averages :math:`|g|^2`
    and is real.
  * Zero-size leaves give empty updates; an empty block's ``v`` is 0, not NaN.
  * Non-finite gradients propagate, as in ``optax.adam``, but only within
    their block: a NaN makes the block's ``v``, and so all of its updates,
    NaN from then on; an inf makes its ``v`` inf, so its own update is NaN
    and the rest of the block's are 0 from then on. Other blocks and leaves
    are unaffected. To skip such steps wrap the optimizer in
    ``optax.apply_if_finite(tx, max_consecutive_errors=...)``, which drops the
    step and keeps the previous state.
  * Huge finite gradients: the block mean of :math:`|g|^2` is computed so that
    it overflows only if ``v`` itself cannot be represented (float32: above
    about 3e38), not when ``g * g`` (``|g| > 1.8e19``) or a large block's sum
    (16M elements: ``|g| > 4.6e15``) would. The update stays Adam's bounded,
    scale-invariant one up to ``|g|`` of about ``sqrt(3e38 / (1 - b2))``
    (5.8e20 for ``b2 = 0.999``); beyond that ``v`` is inf and the block's
    updates are 0, as with ``optax.adam``. All-zero gradients give exactly
    zero updates (for ``eps > 0``).

  Args:
    b1: decay rate of the first moment.
    b2: decay rate of the per-block second moment.
    eps: added to the denominator, outside the square root.
    eps_root: added inside the square root.
    mu_dtype: dtype of the first moment; ``None``: the parameters' dtype. The
      update is computed from the first moment as stored (so a bfloat16
      ``mu`` costs no float32 temporaries); the second moment is float32
      whatever the parameters' dtype. ``jnp.int8``: the first moment is
      stored block-quantized (:mod:`optax_mini.quantize`: int8 codes with the
      parameter's shape plus one float32 scale per block of the last axis,
      256 elements or a divisor of the axis near it, about an eighth of ``optax.adamw``'s state); each step
      dequantizes it, updates it in float32, uses that for the update and
      requantizes it, without writing a float32 ``m`` out in full. Leaves
      under 4096 elements, or with a last axis of one element, keep a
      float32 first moment (``quantize.is_quantized``). Other integer
      dtypes raise, as do floats narrower than 16 bits (float8: unscaled,
      most momenta would round to 0).
    head_dim: size of one attention head, needed by flat
      ``[in, heads*head_dim]`` query/key kernels, or a mapping from path
      patterns to sizes for towers whose heads differ
      (:data:`optax_mini.blocks.HeadDim`). A shape, so static: under
      ``optax.inject_hyperparams`` pass ``static_args=('head_dim',)``.
    blocks: ``None`` (default rules), a :class:`~optax_mini.BlockRules`, a list
      of ``(pattern, role_or_spec)`` rules, or a pytree of
      :class:`~optax_mini.BlockSpec` with the parameters' structure. A leaf
      whose layout the rules cannot confirm from its shape (a 3-D attention
      kernel under an unknown name, a fused qkv kernel of unknown part
      sizes) raises; ``BlockRules(num_heads=..., num_kv_heads=...)``
      settles it.
    partition_specs: only for use inside ``shard_map`` with sharded
      parameters (FSDP): a pytree of ``jax.sharding.PartitionSpec`` with the
      parameters' structure, the specs they are sharded with (shard_map's
      ``in_specs``). Blocks are then derived from the local shards, and a
      block whose averaged axes are split over mesh axes takes the global mean
      (a ``pmean`` over those axes). Not needed under ``jit`` (sharded or not)
      or ``pmap`` with replicated parameters, where the transform sees global
      arrays.
    mu_code: with ``mu_dtype=jnp.int8``, the code map: ``"power"`` (the
      default: ``sign(k) (|k| / 127) ** 4``, the fourth root rounded),
      ``"dynamic"`` (Dettmers et al.'s dynamic tree map: the same error,
      an update about three times as slow on CPU) or ``"linear"``
      (``k / 127``). Every map is rounded stochastically, from the step
      count and the element's position (the same bits on a resumed or
      sharded run): a momentum that only decays must reach 0; see
      :mod:`optax_mini.quantize`. Ignored otherwise.

  Returns:
    An :class:`optax.GradientTransformation` whose state is a
    :class:`ScaleByAdamMiniState`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import optax_mini
    >>> params = {"mlp": {"kernel": jnp.ones((3, 4))}, "norm": {"scale": jnp.ones(4)}}
    >>> tx = optax.chain(optax_mini.scale_by_adam_mini(), optax.scale(-1e-2))
    >>> state = tx.init(params)
    >>> jax.tree.map(jnp.shape, state[0].nu)  # one v per output neuron / tensor
    {'mlp': {'kernel': (4,)}, 'norm': {'scale': ()}}
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)

  References:
    Zhang et al., `Adam-mini: Use Fewer Learning Rates To Gain More
    <https://arxiv.org/abs/2406.16793>`_, ICLR 2025.
  """
  for name, value in (("b1", b1), ("b2", b2)):
    check_hyperparameter(name, value, low=0.0, high=1.0)
  for name, value in (("eps", eps), ("eps_root", eps_root)):
    check_hyperparameter(name, value, low=0.0)
  mu_dtype = utils.canonicalize_dtype(mu_dtype)
  _check_mu_dtype(mu_dtype, mu_code)
  int8 = _is_int8(mu_dtype)
  head_dim = blocks_lib.check_head_dim(head_dim)
  blocks_lib._as_block_rules(blocks)  # a function for blocks= fails here, not at init

  def layouts_for(tree):
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = tuple(p for p, _ in leaves_with_path)
    leaves = [x for _, x in leaves_with_path]
    for path, leaf in leaves_with_path:
      _check_inexact(path, leaf)
    shapes = tuple(tuple(x.shape) for x in leaves)
    paths, named = blocks_lib.leaf_paths(tree, paths)
    specs = blocks_lib._flat_specs(paths, shapes, treedef, head_dim, blocks, named)
    layouts = [s.layout(shape) for s, shape in zip(specs, shapes)]
    given = partition_specs
    if given is None:
      # Inside shard_map, leaves whose Linen boxes (nn.with_partitioning)
      # name bound mesh axes are shards: their specs are those names.
      given = _specs_from_boxes(tree)
    if given is None:
      pspecs = [None] * len(leaves)
      mesh_axes = [()] * len(leaves)
    else:
      pspecs = _flatten_partition_specs(treedef, given, tree)
      mesh_axes = [
          _reduced_mesh_axes(spec, len(shape), pspec, blocks_lib.path_str(path))
          for spec, shape, pspec, path in zip(specs, shapes, pspecs, paths)
      ]
    shards = [
        _shard_of(shape, leaf.dtype, spec.stack_axes, pspec, blocks_lib.path_str(path))
        if int8
        else None
        for shape, leaf, spec, pspec, path in zip(shapes, leaves, specs, pspecs, paths)
    ]
    return treedef, paths, leaves, layouts, mesh_axes, shards, named

  def init_fn(params):
    treedef, paths, leaves, layouts, mesh_axes, shards, named = layouts_for(params)
    blocks_lib.warn_unclaimed_rules(paths, [x.shape for x in leaves], head_dim, blocks, named)
    mu = [_mu_zeros(p, mu_dtype, mu_code, shard) for p, shard in zip(leaves, shards)]
    nu = _v_zeros(leaves, layouts, mesh_axes)
    v_axes = [layout.v_axes for layout in layouts]
    if named is not None:
      # haliax: v and the block scales are named by the axes they keep, not
      # the parameter's (haliax shards a NamedArray by its names).
      plain = jax.tree_util.tree_structure(_strip_names(params))
      mu = _describe_state(params, jax.tree_util.tree_unflatten(plain, mu))
      nu = _describe_state(params, jax.tree_util.tree_unflatten(plain, nu), v_axes)
    else:
      mu, nu = jax.tree_util.tree_unflatten(treedef, mu), jax.tree_util.tree_unflatten(treedef, nu)
    # Under nnx.Optimizer the leaves come back wrapped in the parameters'
    # Variables: v's must name the axes it keeps, not the parameter's.
    nu = _flax.describe_kept_axes(nu, v_axes, [p.ndim for p in leaves])
    return ScaleByAdamMiniState(
        count=jnp.zeros([], jnp.int32), mu=_flax.describe_quantized(mu), nu=nu
    )

  def update_fn(updates, state, params=None):
    del params
    # Gradient shapes are checked against mu before the partition is derived
    # from them: a wrongly shaped gradient would otherwise surface as a
    # misleading partition error (a v mismatch, a head_dim that does not
    # divide) or, worse, broadcast against mu.
    grads_with_path, grads_def = jax.tree_util.tree_flatten_with_path(updates)
    # haliax: the state's v and scales are named otherwise than the
    # gradients (describe_state); they are matched without the names.
    state_def = jax.tree_util.tree_structure(_strip_names(updates))
    mus = [_as_moment(mu) for mu in _flatten_like(state_def, _strip_names(state.mu), "mu", updates)]
    for (path, g), mu in zip(grads_with_path, mus):
      if tuple(jnp.shape(g)) != _mu_shape(mu):
        raise ValueError(
            f"{blocks_lib.path_str(path)}: gradient shape {tuple(jnp.shape(g))} "
            f"differs from the state's mu shape {_mu_shape(mu)}; the "
            "gradients must have the parameters' shapes (no broadcasting)."
        )
    treedef, paths, grads, layouts, mesh_axes, shards, _ = layouts_for(updates)
    nus = _flatten_like(state_def, _strip_names(state.nu), "nu", updates)
    unbound = sorted({a for axes in mesh_axes for a in axes if not _axes_bound((a,))})
    if unbound:
      raise ValueError(
          f"scale_by_adam_mini(partition_specs=...): mesh axes {unbound} are not bound. "
          "partition_specs is for updates inside jax.shard_map, where each device "
          "holds a shard; under jit (sharded or not) the transform sees global "
          "arrays and needs no partition_specs."
      )
    count_inc = numerics.safe_increment(state.count)
    # Bias corrections in float32, as the official code does them in Python
    # floats; they multiply the tiny v-shaped scale, never the full tensor.
    bc1 = 1 - jnp.asarray(b1, jnp.float32) ** count_inc
    bc2 = 1 - jnp.asarray(b2, jnp.float32) ** count_inc
    inv_bc1, inv_sqrt_bc2 = 1 / bc1, jax.lax.rsqrt(bc2)
    static_hyper, traced_hyper = _split_static(b1=b1, b2=b2, eps=eps, eps_root=eps_root)
    static_weight, traced_weight = _split_static(weight=1 - b2)
    new_updates, new_mu, new_nu = [], [], []
    for index, (path, g, mu, nu, layout, axes, shard) in enumerate(
        zip(paths, grads, mus, nus, layouts, mesh_axes, shards)
    ):
      if tuple(nu.shape) != layout.v_shape:
        raise ValueError(
            f"{blocks_lib.path_str(path)}: the state's v has shape "
            f"{tuple(nu.shape)} but this transform's partition gives the "
            f"gradient of shape {tuple(g.shape)} a v of shape {layout.v_shape}."
            " The state was made by a transform with another partition "
            "(head_dim or blocks=); re-create it with this transform's init, "
            "or use the same head_dim/blocks that made it."
        )
      mean = _leaf_mean(g, traced_weight, static_hyper=static_weight, layout=layout)
      if axes:
        mean = jax.lax.pmean(mean, axes)
      quantized = isinstance(mu, quantize_lib.QuantizedMoment)
      if int8 and not quantized:
        _check_small_mu(path, g, mu, shard)
      if quantized and not int8:
        raise ValueError(
            f"{blocks_lib.path_str(path)}: shape {tuple(jnp.shape(g))}: the state's m is "
            f"block-quantized (mu_dtype=int8, the {mu.code!r} code map), but this transform "
            f"has mu_dtype={None if mu_dtype is None else jnp.dtype(mu_dtype)}: the state was "
            "made by a transform with another mu_dtype. Use mu_dtype=jnp.int8 with this "
            "state, convert it (optax_mini.convert_state(state, tx, params)), or "
            "re-create it with this transform's init."
        )
      if quantized and mu.code != mu_code:
        raise ValueError(
            f"{blocks_lib.path_str(path)}: shape {tuple(jnp.shape(g))}: the state's m is "
            f"stored with the {mu.code!r} code map, but this transform has "
            f"mu_code={mu_code!r}: decoding it with another map would give other "
            f"values. Use mu_code={mu.code!r} with this state, convert it "
            "(optax_mini.convert_state(state, tx, params)), or re-create the state "
            "with this transform's init."
        )
      rounding = None
      if quantized:
        rounding = (quantize_lib.rounding_seed(count_inc, index), shard.offsets)
      u, m, v = _leaf_step(
          g, mu, nu, mean, bc2, inv_bc1, inv_sqrt_bc2, traced_hyper, rounding,
          static_hyper=static_hyper, layout=layout,
          mu_dtype=None if int8 else mu_dtype, mu_code=mu_code,
          quantization=(shard.block, shard.global_shape) if quantized else None,
      )
      new_updates.append(u)
      new_mu.append(m)
      new_nu.append(v)
    unflatten = lambda xs: jax.tree_util.tree_unflatten(treedef, xs)  # noqa: E731
    if state_def == treedef:
      new_mu, new_nu = unflatten(new_mu), unflatten(new_nu)
      # Rebuilt in the gradients' Linen boxes / Variables: named as init names them.
      new_nu = _flax.describe_kept_axes(
          new_nu, [layout.v_axes for layout in layouts], [jnp.ndim(g) for g in grads])
      new_mu = _flax.describe_quantized(new_mu)
    else:  # haliax, penzai, Linen boxes, NNX Variables: named as the state came in
      new_mu = _haliax.like(state.mu, jax.tree_util.tree_unflatten(state_def, new_mu))
      new_nu = _haliax.like(state.nu, jax.tree_util.tree_unflatten(state_def, new_nu))
    return unflatten(new_updates), ScaleByAdamMiniState(
        count=count_inc, mu=new_mu, nu=new_nu
    )

  return optax.GradientTransformation(init_fn, update_fn)


@functools.partial(jax.jit, static_argnames=("layout", "static_hyper"))
def _leaf_mean(g, traced_hyper, *, static_hyper, layout):
  """``_mean_square`` of one leaf, traced once per (shape, dtype, layout).

  A 32-layer model repeats a handful of leaf signatures hundreds of times;
  a cached inner ``jit`` traces each once (the outer trace only adds a call).
  ``weight`` (from ``_split_static``) is folded into the overflow guard when
  it is a number, and a traced argument under ``inject_hyperparams``.
  """
  weight = {**dict(static_hyper), **traced_hyper}["weight"]
  return _mean_square(g, layout, weight=weight)


def _split_static(**hyper: Any) -> tuple[tuple[tuple[str, float], ...], dict[str, Any]]:
  """Python/NumPy numbers (static: folded as Python floats, as written) apart
  from traced ones (``optax.inject_hyperparams``)."""
  static, traced = [], {}
  for name, value in hyper.items():
    try:
      static.append((name, float(value)))
    except (TypeError, jax.errors.ConcretizationTypeError):
      traced[name] = value
  return tuple(static), traced


def _check_small_mu(path, g, mu, shard: _Shard) -> None:
  if shard.quantized:
    raise ValueError(
        f"{blocks_lib.path_str(path)}: shape {tuple(jnp.shape(g))} is quantized with "
        f"mu_dtype=int8, but the state's mu is a plain {jnp.result_type(mu)} array: the state "
        "was made by a transform with another mu_dtype. Convert it "
        "(optax_mini.convert_state(state, tx, params)), re-create it with this "
        "transform's init, or use the mu_dtype that made it."
    )


@functools.partial(
    jax.jit, static_argnames=("layout", "mu_dtype", "mu_code", "quantization", "static_hyper")
)
def _leaf_step(g, mu, nu, mean, bc2, inv_bc1, inv_sqrt_bc2, traced_hyper, rounding, *,
               static_hyper, layout, mu_dtype, mu_code, quantization):
  """One leaf's update from its block means: ``(update, new mu, new nu)``.

  Traced once per leaf signature, like ``_leaf_mean``. Numeric
  hyperparameters are static, so ``1 - b1`` is the Python float the official
  code uses (not ``1 - float32(b1)``).
  """
  hyper = {**dict(static_hyper), **traced_hyper}
  b1, b2, eps, eps_root = (hyper[k] for k in ("b1", "b2", "eps", "eps_root"))
  cdt = _compute_dtype(g.dtype)
  g_c = g.astype(cdt)
  if isinstance(mu, quantize_lib.QuantizedMoment):
    block, global_shape = quantization
    seed, offsets = rounding
    # m is never written out in full: the block maxima and the codes each
    # recompute it from g and the old codes inside their own fusion. The
    # update then reads m as stored, dequantized from the new codes (as with
    # a bf16 m): 1 byte per parameter instead of g and the old codes, and
    # no copy of the old codes (which the new ones overwrite in place).
    m_stored = quantize_lib._quantized_ema(  # noqa: SLF001
        mu, g_c, b1, seed, block=block, global_shape=global_shape, offsets=offsets
    )
    m_stored = m_stored._replace(codes=_materialized(m_stored.codes))
    m = quantize_lib.dequantize(m_stored, block=block).astype(cdt)
  else:
    # The update reads m as stored: with a narrow mu_dtype (bf16) no
    # full-size float32 copy of m outlives its fusion (at 7B shapes that
    # is 14 GB of temporaries), and the next step starts from this m anyway.
    m_stored = ((1 - b1) * g_c + b1 * mu.astype(cdt)).astype(
        mu_dtype if mu_dtype is not None else mu.dtype
    )
    m = m_stored.astype(cdt)
  v = mean + b2 * nu.astype(_v_dtype(g.dtype))
  v = v.astype(nu.dtype)
  # Work on the v-shaped array, then one broadcast multiply over m: the
  # only full-size passes are the ones Adam needs for m.
  # sqrt(v / bc2) as sqrt(v) / sqrt(bc2), as the official code does: v / bc2
  # (1000 v at step 1) could overflow where v is finite.
  root = jnp.sqrt(v + eps_root * bc2) * inv_sqrt_bc2
  scale = inv_bc1 / (root + eps)
  scale = scale.reshape(layout.keepdims_shape)
  u = (m.reshape(layout.view_shape) * scale).reshape(g.shape)
  return u.astype(g.dtype), m_stored, v


def _materialized(x: jax.Array) -> jax.Array:
  """``x``, written out before its readers run.

  An identity to the values: its first element written back over itself. XLA
  fuses an elementwise producer into each consumer, so without it the update
  would recompute the quantization of m (from g and the old codes) instead of
  reading the 1-byte codes; a dynamic-update-slice, done in place, is not
  fused into its consumers. An array sharded in its type (``Explicit`` mesh
  axes) is returned as is: a one-element slice of it is not defined there,
  and the update recomputing the codes gives the same values.
  """
  sharding = getattr(jax.typeof(x), "sharding", None)
  if sharding is not None and any(axis is not None for axis in sharding.spec):
    return x
  corner = (0,) * x.ndim
  return jax.lax.dynamic_update_slice(x, jax.lax.slice(x, corner, (1,) * x.ndim), corner)


def _strip_names(tree: Any) -> Any:
  """``tree`` without haliax's or penzai's named arrays, Linen's
  partitioning boxes or NNX Variables (their arrays in their place): the
  state is named otherwise than the parameters."""
  return _flax.strip_variables(_flax.unbox(_penzai.strip(_haliax.strip(tree))))


def _describe_state(params: Any, tree: Any, v_axes: Any = None) -> Any:
  """``tree`` (in the structure of ``_strip_names(params)``) named as
  haliax or penzai name ``params`` (:func:`_haliax.describe_state`)."""
  named = _haliax.describe_state(params, tree, v_axes)
  return _penzai.describe_state(params, named, v_axes) if named is tree else named


def _flatten_like(treedef, tree, name: str, updates) -> list[Any]:
  try:
    return treedef.flatten_up_to(tree)
  except (ValueError, TypeError) as e:
    raise ValueError(
        f"scale_by_adam_mini: the gradients' tree structure does not match the "
        f"optimizer state's {name}: {e}. The gradients must have the structure "
        f"of the parameters the state was initialised with "
        f"({jax.tree_util.tree_structure(updates)})."
    ) from None


def _flatten_partition_specs(treedef, partition_specs, tree: Any = None) -> list[Any]:
  """One spec per leaf: ``partition_specs`` in the structure of ``tree`` (the
  parameters), or in its structure without Linen boxes / NNX Variables
  (what ``nn.get_partition_spec(params)`` gives)."""
  is_spec = lambda x: isinstance(x, PartitionSpec) or x is None  # noqa: E731
  try:
    return treedef.flatten_up_to(partition_specs)
  except (ValueError, TypeError) as e:
    error = e
  if tree is not None:
    plain = jax.tree_util.tree_structure(_strip_names(tree))
    if plain != treedef:
      try:
        specs = jax.tree_util.tree_leaves(partition_specs, is_leaf=is_spec)
        return plain.flatten_up_to(jax.tree_util.tree_unflatten(
            jax.tree_util.tree_structure(partition_specs, is_leaf=is_spec), specs))
      except (ValueError, TypeError):
        pass
  raise ValueError(
      "partition_specs= must be a pytree of jax.sharding.PartitionSpec with the "
      f"parameters' structure ({treedef}), or with their structure without Linen "
      f"boxes (nn.get_partition_spec(params)); {error}"
  ) from None


def _specs_from_boxes(tree: Any) -> Any:
  """Inside ``shard_map``: a ``PartitionSpec`` per leaf from its Linen box
  (``nn.Partitioned``' mesh axis names, a ``LogicallyPartitioned`` one's as
  its rules map them) where the box names bound mesh axes, ``None`` for the
  other leaves; ``None`` if no leaf has such a box (or outside shard_map)."""
  if not any(_flax._is_box(x) for x in jax.tree_util.tree_leaves(tree, is_leaf=_flax._is_box)):
    return None
  found = False

  def spec(box: Any) -> Any:
    nonlocal found
    try:
      pspec = box.get_partition_spec()
    except Exception:  # noqa: BLE001 (logical names without rules: not mesh axes)
      return None
    names = [n for entry in pspec if entry is not None
             for n in ((entry,) if isinstance(entry, str) else entry)]
    if not names or not _axes_bound(tuple(names)):
      return None
    found = True
    return pspec

  # in the boxed tree's structure: each box holding its array's spec
  specs = jax.tree_util.tree_map(
      lambda x: x.replace(value=spec(x)) if _flax._is_box(x) else None, tree, is_leaf=_flax._is_box
  )
  return specs if found else None
