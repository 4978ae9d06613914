"""An 8-bit first moment: block-wise absmax quantization along the last axis.

With ``v`` cut to one value per block, Adam-mini's state is almost all first
moment ``m``. ``mu_dtype=jnp.int8`` stores it as one int8 code per element
(the parameter's shape, so it shards like the parameter) plus one float32
scale per block of consecutive elements of the last axis (256, 128 or 64
where one divides the axis: :func:`block_size`): 1.02-1.06 bytes per
parameter, an eighth of ``optax.adamw``'s 8.

A block's elements are divided by the block's absolute maximum (its scale)
and each quotient in ``[-1, 1]`` is stored as the index of a value of a
*code map* of at most 256 values. Three maps are implemented:

* ``"dynamic"``: the signed dynamic tree map of Dettmers et al.
  (2022), :func:`dynamic_code_map`: seven decades below the block's maximum,
  resolved linearly within each (1 value in the lowest, 64 in the highest).
  Momentum values span orders of magnitude within a block (an output
  neuron's few large entries next to many small ones), which a
  relative-precision map keeps and a linear one rounds to zero.
  :func:`quantize` stores a quotient as the nearest value; the update rounds
  stochastically between the two values around it (the power map's dither),
  for the reason given below.
* ``"power"``: :func:`power_code_map`, ``sign(k) (|k| / 127) ** 4``: a
  step is about ``4 / |k|`` of the value (3 % at the block's maximum, 11 %
  at a hundredth of it), so it too keeps relative precision over decades;
  its RMS error on Gaussian, Laplace and Student-t blocks is the dynamic
  map's (1.0-1.2 %) when rounded to nearest. The index is the fourth root
  rounded (two square roots) and the value three multiplies: about a fifth
  of the dynamic map's vector operations. The update rounds the root
  *stochastically* (up with probability its fractional part; the dither a
  Weyl sequence of the element's position and the step, in the state like
  the linear map's bits): nearest rounding cannot follow a momentum that
  only decays once it is small against its block's maximum
  (``round(b1**(1/4) k) = k`` for codes below 19 at ``b1 = 0.9``; on the
  dynamic map, every value whose step down is over a fifth of it: its three
  lowest decades and the bottom of the next three), and a column that stops
  getting gradient kept a constant ``m`` while its ``v`` decayed, its
  update growing without bound.
* ``"linear"``: 255 evenly spaced values ``k / 127``, with stochastic
  rounding (unbiased: the expected stored value is exact). The random bits
  are a counter-based hash of the step count, the leaf's index and the
  element's position, so they live in the state: a resumed run repeats them
  bit for bit, and a sharded run draws the same bits as one device.

The update uses ``m`` as stored (the new codes, dequantized), as it does
with a bfloat16 ``m``.

The default, ``"power"`` (:data:`DEFAULT_CODE`), was chosen by measurement
on the example: its held-out loss is float32 ``m``'s, as the dynamic map's
was, and its update runs about 3x as fast on CPU (``benchmarks/RESULTS.md``
sections 3 and 5; the README's "An 8-bit first moment").

Leaves with fewer than :data:`MIN_QUANTIZED_SIZE` elements (norm scales,
biases; for a layer-stacked leaf, per layer: :func:`is_quantized`), leaves
whose last axis has one element (blocks of one would take more bytes than a
float32 ``m``) and complex leaves keep a float32 (complex64) ``m``: they are
a negligible share of the state.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "BLOCK_SIZE",
    "CODES",
    "DEFAULT_CODE",
    "MIN_BLOCK_SIZE",
    "MIN_QUANTIZED_SIZE",
    "QuantizedMoment",
    "block_absmax",
    "block_size",
    "dequantize",
    "dynamic_code_map",
    "is_quantized",
    "linear_code_map",
    "power_code_map",
    "quantize",
    "rounding_seed",
]

BLOCK_SIZE = 256
MIN_BLOCK_SIZE = 64
MIN_QUANTIZED_SIZE = 4096
CODES = ("dynamic", "linear", "power")
DEFAULT_CODE = "power"


@jax.tree_util.register_pytree_with_keys_class
class QuantizedMoment:
  """One leaf's first moment, quantized (``mu_dtype=jnp.int8``).

  A pytree of two arrays whose key names carry the code map: ``codes`` is
  keyed ``power_codes``, ``dynamic_codes`` or ``linear_codes``. A state
  written with one map therefore cannot be read as another: an orbax
  restore into a state made with another ``mu_code`` fails on the key
  (``Target path ... 'dynamic_codes' not found``), and the update refuses a
  moment whose ``code`` is not its own, instead of decoding the codes with
  the wrong map.

  Attributes:
    codes: int8, the parameter's shape: each element's signed index into the
      code map (for the dynamic map, its index offset by -128).
    scales: float32, shaped like the parameter with the last axis ``n``
      replaced by ``ceil(n / block_size(n))``: each block's absolute
      maximum. Only where :func:`block_size` finds no divisor of ``n`` is
      the last block of a row short (zero-padded).
    code: the code map, one of :data:`CODES` (static: pytree metadata).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optax_mini import quantize
    >>> q = quantize.quantize(jnp.ones((2, 256)))
    >>> q.code, [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(q)]
    ('power', ['.power_codes', '.scales'])
  """

  __slots__ = ("codes", "scales", "code")

  def __init__(self, codes: Any, scales: Any, code: str = DEFAULT_CODE):
    if code not in CODES:
      raise ValueError(f"code={code!r}: expected one of {CODES}.")
    self.codes, self.scales, self.code = codes, scales, code

  @property
  def key(self) -> str:
    """The pytree key of :attr:`codes`: ``f"{code}_codes"``."""
    return f"{self.code}_codes"

  def _replace(self, **changes: Any) -> QuantizedMoment:
    fields = {"codes": self.codes, "scales": self.scales, "code": self.code}
    return QuantizedMoment(**{**fields, **changes})

  def tree_flatten_with_keys(self):
    keys = (jax.tree_util.GetAttrKey(self.key), jax.tree_util.GetAttrKey("scales"))
    return tuple(zip(keys, (self.codes, self.scales))), self.code

  def tree_flatten(self):
    return (self.codes, self.scales), self.code

  @classmethod
  def tree_unflatten(cls, code: str, children: Any) -> QuantizedMoment:
    # No checks: jax rebuilds pytrees with any leaves (None, shardings, ...).
    moment = object.__new__(cls)
    moment.codes, moment.scales = children
    moment.code = code
    return moment

  def __repr__(self) -> str:
    return f"QuantizedMoment({self.key}={self.codes!r}, scales={self.scales!r})"


def dynamic_code_map() -> np.ndarray:
  """The signed dynamic tree code map (Dettmers et al., 2022), float64, sorted.

  256 values in ``[-1, 1]``: 0, 1, and for each decade ``i = 0..6`` the
  midpoints of ``2**i`` equal steps of ``[0.1, 1]`` scaled by ``10**(i - 6)``,
  with both signs. The smallest positive value is ``5.5e-7``, the largest
  below 1 is ``0.993``.

  Example:
    >>> from optax_mini import quantize
    >>> code = quantize.dynamic_code_map()
    >>> code.shape, float(code.min()), float(code.max())
    ((256,), -0.99296875, 1.0)
  """
  values = [0.0, 1.0]
  for decade in range(7):
    edges = np.linspace(0.1, 1.0, 2**decade + 1)
    mids = (edges[:-1] + edges[1:]) / 2 * 10.0 ** (decade - 6)
    values += list(mids) + list(-mids)
  return np.sort(np.asarray(values, np.float64))


def power_code_map() -> np.ndarray:
  """The power code map ``sign(k) * (|k| / 127) ** 4`` for ``k = -127..127``,
  float64, sorted (255 values).

  A step is about ``4 / |k|`` of the value: 3 % near the block's maximum,
  6 % at a tenth of it, 11 % at a hundredth; the smallest positive value is
  ``3.8e-9``. On Gaussian, Laplace and Student-t blocks of
  256 its error is that of :func:`dynamic_code_map` (RMS relative error 1.0-1.2 % for
  both), and it is computed with two square roots instead of a search over
  seven decades.

  Example:
    >>> from optax_mini import quantize
    >>> code = quantize.power_code_map()
    >>> code.shape, float(code.min()), float(code.max())
    ((255,), -1.0, 1.0)
  """
  k = np.arange(-127, 128, dtype=np.float64)
  return np.sign(k) * (np.abs(k) / 127) ** 4


def linear_code_map() -> np.ndarray:
  """The linear code map ``k / 127`` for ``k = -128..127``, float64, sorted
  (``-128`` is never produced: quotients are clipped to ``[-127, 127]``)."""
  return np.arange(-128, 128, dtype=np.float64) / 127


@functools.cache
def block_size(n: int) -> int:
  """The block length along a last axis of ``n`` elements.

  The whole axis if ``n <= 256``; else the largest of 256, 128 and 64 that
  divides ``n`` (384 -> 128, 640 -> 128, 8000 -> 64); else a divisor of
  ``n`` between :data:`MIN_BLOCK_SIZE` and :data:`BLOCK_SIZE` with the most
  factors of two (up to 16), the largest of those (1000 -> 200); else 256
  with the last block zero-padded (a prime width, say).

  Why (``benchmarks/RESULTS.md``, section 3): every pass over the codes
  multiplies each element by its block's factor. With a power-of-two block
  XLA:CPU's vectorised loops read one factor per vector (the block index is
  a shift of the element's); with another block LLVM loads each lane's
  factor on its own, which made those passes 2-3x slower on a 2-core AVX-512
  Xeon: blocks of 192 for an axis of 384 took the update of a 35M-parameter
  LLaMA to 0.49x AdamW's speed, 250 for 8000 a ``[256, 8000]`` leaf's update
  to 2.8x the time of 160's. A padded last block was slower still (2x the
  whole update). Smaller blocks cost scales: 4 bytes per block, 1.6 % of
  the codes' bytes at 256, 6.3 % at 64.

  Example:
    >>> from optax_mini import quantize
    >>> [quantize.block_size(n) for n in (100, 384, 640, 4096, 8000, 11008, 1000, 1031)]
    [100, 128, 128, 256, 64, 256, 200, 256]
  """
  if n <= BLOCK_SIZE:
    return n
  for block in (256, 128, 64):
    if n % block == 0:
      return block
  divisors = [b for b in range(MIN_BLOCK_SIZE, BLOCK_SIZE + 1) if n % b == 0]
  if not divisors:
    return BLOCK_SIZE
  return max(divisors, key=lambda b: (min(_twos(b), 4), b))


def _twos(b: int) -> int:
  """How many times 2 divides ``b > 0``."""
  return (b & -b).bit_length() - 1


def is_quantized(shape: tuple[int, ...], dtype: Any, stack_axes: tuple[int, ...] = ()) -> bool:
  """Whether ``mu_dtype=int8`` quantizes a leaf of this shape and dtype.

  A real leaf of at least :data:`MIN_QUANTIZED_SIZE` elements is quantized.
  A layer-stacked leaf (``stack_axes``, from ``BlockRules(stacked=)``) is
  judged as its unstacked model would be, one layer at a time: a stack of
  norm scales (MaxText's ``[embed, layers]``) keeps a float32 ``m`` as each
  layer's ``[embed]`` would. A leaf whose last axis is a stack axis also
  keeps a float32 ``m``: a block along it would mix layers. So does a leaf
  whose last axis has one element (a ``[dim, 1]`` scalar head): its blocks
  would hold one element each, a 4-byte scale per 1-byte code, 5 bytes per
  element where a float32 ``m`` takes 4.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_mini import quantize
    >>> quantize.is_quantized((2304, 13), jnp.float32)
    True
    >>> quantize.is_quantized((2304, 13), jnp.float32, stack_axes=(1,))
    False
    >>> quantize.is_quantized((2304, 13, 8, 256), jnp.float32, stack_axes=(1,))
    True
    >>> quantize.is_quantized((8192, 1), jnp.float32)
    False
  """
  ndim = len(shape)
  stack = {axis % ndim for axis in stack_axes} if ndim else set()
  per_layer = math.prod(size for axis, size in enumerate(shape) if axis not in stack)
  return (
      ndim >= 1
      and ndim - 1 not in stack
      and shape[-1] > 1
      and per_layer >= MIN_QUANTIZED_SIZE
      and jnp.issubdtype(dtype, jnp.floating)
  )


def _whole_blocks(x: jax.Array, block: int) -> jax.Array:
  """``x``, its last axis gathered if ``x`` is sharded in its type
  (``Explicit`` mesh axes) into shards that split a block.

  A ``[128, 384]`` kernel sharded ``("fsdp", "tp")`` over ``tp = 2`` holds
  192 columns per device, one and a half blocks of 128: its blocks cannot be
  a view of the shards (JAX refuses the reshape). Each device then works on
  whole rows for the block maxima (an all-gather over ``tp`` of this leaf).
  Shards of whole blocks (the usual case: a last axis split into multiples
  of 256) keep their sharding.
  """
  sharding = getattr(jax.typeof(x), "sharding", None)
  spec = tuple(getattr(sharding, "spec", None) or ())
  if len(spec) < x.ndim or spec[x.ndim - 1] is None:
    return x
  last = spec[x.ndim - 1]
  names = (last,) if isinstance(last, str) else tuple(last)
  shards = math.prod(sharding.mesh.shape[name] for name in names)
  if (x.shape[-1] // shards) % block == 0:
    return x
  return jax.sharding.reshard(x, jax.sharding.PartitionSpec(*spec[: x.ndim - 1], None))


def _blocked(x: jax.Array, block: int | None) -> jax.Array:
  """``x`` viewed as ``[..., num_blocks, block]``, the last block zero-padded."""
  n = x.shape[-1]
  block = block or block_size(n)
  x = _whole_blocks(x, block)
  pad = -n % block
  if pad:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
  return x.reshape(x.shape[:-1] + ((n + pad) // block, block))


@functools.cache
def _inner(block: int) -> int:
  """The first stage's length in :func:`block_absmax`: the largest divisor of
  the block in [8, 32] (32 for the power-of-two blocks, 25 for 250 or 200),
  else 16 with the block zero-padded. A first stage that does not divide the
  block (padded) made the maxima 3-6x slower on XLA:CPU. Each first-stage
  group ends in a horizontal maximum across the vector (about ten
  instructions); groups of 32 instead of 16 halve those (part of the gain
  in ``benchmarks/RESULTS.md`` section 3, session #6). A longer first stage
  (64) is split by XLA into a windowed reduction that writes ``|m|`` out."""
  divisors = [d for d in range(8, 33) if block % d == 0]
  return max(divisors) if divisors else 16


def block_absmax(x: jax.Array, block: int | None = None) -> jax.Array:
  """Each block's ``max(|x|)``: the ``scales`` :func:`quantize` computes.

  Written so that XLA:CPU fuses the reduction with the computation of ``x``
  (the new ``m``) instead of writing ``x`` out in full (a full-size float32
  ``m`` per leaf, every leaf's alive at once: 34 GB of temporaries at 7B):
  a float max reduction goes to a library kernel that needs its input in
  memory, and a long one is split into a windowed pre-reduction that does
  not fuse its producer. So the max is taken over the int32 bit patterns of
  ``|x|`` (ordered as the floats are, for non-negative values; a NaN's
  pattern is above inf's, so a NaN still propagates), in two stages that a
  barrier keeps apart, the first over at most 32 consecutive elements.
  """
  blocked = _blocked(jnp.abs(x.astype(jnp.float32)), block)
  bits = jax.lax.bitcast_convert_type(blocked, jnp.int32)
  inner = _inner(bits.shape[-1])
  extra = -bits.shape[-1] % inner  # zeros leave a max of |x| unchanged
  if extra:
    bits = jnp.pad(bits, [(0, 0)] * (bits.ndim - 1) + [(0, extra)])
  bits = bits.reshape(bits.shape[:-1] + (bits.shape[-1] // inner, inner))
  bits = jnp.max(jax.lax.optimization_barrier(jnp.max(bits, axis=-1)), axis=-1)
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


# The dynamic map, by decade d = 0..6: 2**d values (0.1 + (k + 0.5) * 0.9 /
# 2**d) * 10**(d - 6), k = 0..2**d - 1. In sorted order the map is 127
# negatives (index 0..126), 0 (127), 127 positives (128..254) and 1 (255); a
# positive of rank r (r = 2**d - 1 + k) has index 128 + r, a negative 126 - r.
# Quantization and dequantization compute the index and the value from these
# per-decade constants, elementwise: no table lookups (gathers are slow on
# CPU and do not take a sharded index under sharding in types).
_DECADES = 7


@functools.cache
def _decade_constants() -> dict[str, tuple[float, ...]]:
  d = np.arange(_DECADES)
  width = 10.0 ** (d - 6.0)
  n = 2.0**d
  smallest = (0.1 + 0.45 / n) * width
  largest = (1 - 0.45 / n) * width
  return {
      "base": tuple(smallest),
      "largest": tuple(largest),
      "step": tuple(0.9 / n * width),
  }


def _select(masks: list[jax.Array], values: tuple[float, ...]) -> jax.Array:
  """``values[d]`` where ``d`` masks hold (the masks are nested: each implies
  the one before), as a chain of float selects."""
  out = jnp.full(masks[0].shape, values[0], jnp.float32)
  for mask, value in zip(masks, values[1:]):
    out = jnp.where(mask, jnp.float32(value), out)
  return out


@functools.cache
def _dynamic_segments() -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
  """The dynamic map's magnitudes as 14 linear segments, for rounding:
  ``(starts, slopes, intercepts)``.

  The map's non-negative values in order have ranks -1 (0), 0..126 (the
  decades) and 127 (1). Between two neighbours the spacing is one decade's
  step, or the gap from a decade's largest value to the next decade's
  smallest (from 0 to the smallest; from the largest to 1). Each segment is
  a run of equal spacing; on it ``rank + fraction = a * slope + intercept``.
  """
  c = _decade_constants()
  smallest, largest = c["base"], c["largest"]
  # (start, its rank, spacing) of each segment, ascending.
  segments = [(0.0, -1, smallest[0])]
  for d in range(_DECADES):
    if d:  # decade 0 is one value: no grid segment
      segments.append((smallest[d], 2**d - 1, c["step"][d]))
    upper = smallest[d + 1] if d + 1 < _DECADES else 1.0
    segments.append((largest[d], 2 ** (d + 1) - 2, upper - largest[d]))
  starts = tuple(start for start, _, _ in segments)
  slopes = tuple(1 / spacing for _, _, spacing in segments)
  intercepts = tuple(rank - start / spacing for start, rank, spacing in segments)
  return starts, slopes, intercepts


def _dynamic_index(q: jax.Array, dither: Any) -> jax.Array:
  """Index (0..255, as float32) of one of the two dynamic-map values around
  each ``q`` in ``[-1, 1]``: the one above where ``dither`` is at least the
  rest of the way from the one below. With ``dither`` uniform in
  ``[0, 1)`` (stochastic rounding) that is the fraction of the way ``|q|``
  lies from the one below, so the expected value is ``q`` (but for
  negatives beyond the largest negative value, ``-0.993``: the map has no
  ``-1``); with ``dither = 0.5`` it is the nearest value (a tie within one
  float32 rounding may go either way). Float compares and selects only
  (13 and 26): they vectorise, integer decade arithmetic did not (4x slower
  on CPU)."""
  starts, slopes, intercepts = _dynamic_segments()
  a = jnp.abs(q)
  masks = [a >= jnp.float32(start) for start in starts[1:]]
  position = a * _select(masks, slopes) + _select(masks, intercepts)
  rank = jnp.clip(jnp.floor(position + dither), -1, 127)
  # 1 has no negative: above the largest negative magnitude, -0.993 (index 0).
  return jnp.where(q >= 0, 128 + rank, jnp.maximum(126 - rank, 0))


def _dynamic_value(index: jax.Array) -> jax.Array:
  """The dynamic map's value at ``index`` (0..255, any real dtype), float32."""
  c = _decade_constants()
  index = index.astype(jnp.float32)
  rank = jnp.where(index >= 128, index - 128, 126 - index)
  masks = [rank + 1 >= 2**d for d in range(1, _DECADES)]
  k = rank - _select(masks, tuple(float(2**d - 1) for d in range(_DECADES)))
  magnitude = _select(masks, c["base"]) + k * _select(masks, c["step"])
  value = jnp.where(index >= 128, magnitude, -magnitude)
  value = jnp.where(index == 255, 1.0, value)
  return jnp.where(index == 127, 0.0, value)


def _power_codes(q: jax.Array, scaled: bool = False, dither: jax.Array | None = None) -> jax.Array:
  """The power map's codes (int8, -127..127) of each ``q`` in ``[-1, 1]``:
  ``127 * |q| ** (1 / 4)`` rounded to the nearest integer (half to even),
  with ``q``'s sign. Rounding the fourth root instead of the value moves
  each boundary from the midpoint of two values to the value of the midpoint
  of their roots; the error it adds is below 0.1 % of the RMS error on
  Gaussian, Laplace and Student-t blocks (same within three digits).

  The rounding is float32's own: adding ``1.5 * 2**23`` leaves the nearest
  integer in the low mantissa bits, read back with a bitcast. It is exact
  (``|k| <= 127``) and equals ``round`` then a convert, which XLA:CPU
  compiles to a saturating float-to-int8 convert that cost as much as the
  two square roots (``benchmarks/RESULTS.md``, section 3). With
  ``scaled=True``, ``q`` comes multiplied by ``127**4``. ``q``'s sign goes
  on by flipping the root's sign bit (an and and an xor, where a compare,
  a negation and a select took three vector operations).

  With a ``dither`` (uniform in ``[-1/2, 1/2)``, shaped like ``q``) the root
  is rounded stochastically instead: up with probability its fractional
  part (the dither added before the rounding), so the expected code is the
  root. Nearest rounding cannot follow a momentum that only decays once it
  is small against its block's maximum: ``round(b1**(1/4) k) = k`` for
  every code below ``0.5 / (1 - b1**(1/4))`` (19 at ``b1 = 0.9``), so a
  column that gets no gradient would keep a constant ``m`` while its ``v``
  decays (``tests/test_int8.py::test_momentum_of_dead_columns_decays``).
  A dithered root is capped at 127.25, which rounds as any value in
  ``[127, 127.5)`` does: a root a rounding above 127 plus a dither near
  one half would otherwise round to 128.
  """
  k = jnp.sqrt(jnp.sqrt(jnp.abs(q)))
  if not scaled:
    k = k * 127
  if dither is not None:
    k = jnp.minimum(k + dither, jnp.float32(127.25))
  sign = jax.lax.bitcast_convert_type(q, jnp.int32) & jnp.int32(-(2**31))
  k = jax.lax.bitcast_convert_type(jax.lax.bitcast_convert_type(k, jnp.int32) ^ sign, jnp.float32)
  bits = jax.lax.bitcast_convert_type(k + jnp.float32(_MAGIC), jnp.int32) - jnp.int32(_MAGIC_BITS)
  return bits.astype(jnp.int8)


# 1.5 * 2**23: float32s in [2**23, 2**24) are the integers, so adding it to
# |k| <= 2**22 rounds k to the nearest integer (ties to even) and stores it in
# the low mantissa bits; _MAGIC_BITS is the magic number's own bit pattern.
_MAGIC = 12582912.0
_MAGIC_BITS = 0x4B400000


def _positions(
    like: jax.Array,
    global_shape: tuple[int, ...] | None = None,
    offsets: tuple[Any, ...] | None = None,
    *,
    multiplier: int = 1,
    start: Any = 0,
) -> jax.Array:
  """``start + multiplier * position`` (uint32, modulo 2**32) of each
  element, its position row-major in the global array; shaped and sharded
  like ``like``. A shard (inside ``shard_map``) passes the global shape and
  its ``offsets`` along each axis, so that it gets the positions one device
  would.

  Summed as ``start + sum(index * (stride * multiplier))`` over the axes,
  outermost first (the same value modulo 2**32): the inner loop then adds
  one loop-invariant row term to the last axis' index times the multiplier,
  a multiply and an add per element fewer than multiplying the position.
  """
  shape = like.shape
  global_shape = global_shape or shape
  factors, factor = [0] * len(shape), multiplier % 2**32
  for axis in reversed(range(len(shape))):
    factors[axis] = factor
    factor = (factor * global_shape[axis]) % 2**32
  # Positions with ``like``'s sharding (under sharding in types).
  sharding = getattr(jax.typeof(like), "sharding", None)
  h = jnp.broadcast_to(jnp.asarray(start).astype(jnp.uint32), shape)
  for axis in range(len(shape)):
    index = jax.lax.broadcasted_iota(jnp.uint32, shape, axis, out_sharding=sharding)
    if offsets is not None:
      index = index + jnp.asarray(offsets[axis]).astype(jnp.uint32)
    h = h + index * jnp.uint32(factors[axis])
  return h


def _hash_uniform(
    like: jax.Array,
    seed: jax.Array,
    global_shape: tuple[int, ...] | None = None,
    offsets: tuple[Any, ...] | None = None,
) -> jax.Array:
  """Uniform ``[0, 1)`` floats shaped like ``like``, a counter-based hash
  (murmur3's finaliser) of each element's global position and ``seed``
  (uint32): the linear map's random bits."""
  h = _positions(like, global_shape, offsets, multiplier=0x9E3779B1, start=seed)
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  h = h ^ (h >> 16)
  return (h >> 8).astype(jnp.float32) * (1.0 / (1 << 24))


_PHI = 0x9E3779B9  # 2**32 / the golden ratio, odd


def _weyl_uniform(
    like: jax.Array,
    seed: jax.Array,
    global_shape: tuple[int, ...] | None = None,
    offsets: tuple[Any, ...] | None = None,
    *,
    offset: float = 0.0,
) -> jax.Array:
  """Dither shaped like ``like``: ``frac(position * phi + seed / 2**32)`` to
  23 bits, in 32-bit integers (a Weyl sequence; ``phi`` the golden ratio),
  minus ``offset``: uniform in ``[-offset, 1 - offset)``. The stochastic
  rounding of the power map (``offset=0.5``) and of the dynamic map.

  Over the elements of a step it is spread evenly over its range; for one
  element over the steps (``seed`` = :func:`rounding_seed`, which moves by
  an odd constant per step) it is a Weyl sequence too, so the rounding is
  unbiased on average over time. One multiply and an add per element, where
  the murmur hash takes five more operations: the update at 35M parameters
  ran 1.08x AdamW's speed with this dither and 0.96x with the hash
  (ad hoc, 40 interleaved pairs, 2-core Zen 5 EPYC; nearest rounding 1.16x).
  The 23 bits go straight into a float32 mantissa (``[1, 2)``, then one
  subtraction, exact): no integer-to-float convert and no multiply.
  """
  h = _positions(like, global_shape, offsets, multiplier=_PHI, start=seed)
  one_to_two = jax.lax.bitcast_convert_type((h >> 9) | jnp.uint32(0x3F800000), jnp.float32)
  return one_to_two - jnp.float32(1 + offset)


def rounding_seed(count: jax.Array, leaf_index: int) -> jax.Array:
  """The stochastic-rounding seed of one leaf at one step (uint32): a hash of
  the step ``count`` and the leaf's index in the tree, nothing else."""
  c = jnp.asarray(count).astype(jnp.uint32)
  return c * jnp.uint32(0x27D4EB2F) + jnp.uint32((leaf_index * 0x165667B1 + 1) % 2**32)


def quantize(
    x: jax.Array,
    code: str = DEFAULT_CODE,
    seed: jax.Array | None = None,
    *,
    block: int | None = None,
    global_shape: tuple[int, ...] | None = None,
    offsets: tuple[Any, ...] | None = None,
    scales: jax.Array | None = None,
) -> QuantizedMoment:
  """Block-wise absmax quantization of ``x`` along its last axis.

  Args:
    x: a real array with at least one axis.
    code: ``"power"`` (the default: :func:`power_code_map`, the fourth
      root rounded), ``"dynamic"`` (:func:`dynamic_code_map`) or
      ``"linear"`` (:func:`linear_code_map`). Each rounds stochastically if
      ``seed`` is given (the power map its root, the others the value:
      up with probability the fraction of the way to the next value), else
      to nearest.
    seed: uint32 scalar for stochastic rounding (the update passes
      :func:`rounding_seed`).
    block: the block length (``None``: :func:`block_size` of the last axis).
      A shard of a leaf whose last axis is split passes the global one's.
    global_shape: with ``offsets``, where this shard lies in the global leaf
      (stochastic rounding draws by global position).
    offsets: the shard's start along each axis.
    scales: the blocks' absolute maxima, if already known
      (:func:`block_absmax`).

  Returns:
    A :class:`QuantizedMoment`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_mini import quantize
    >>> x = jnp.linspace(-1.0, 3.0, 512).reshape(2, 256)
    >>> q = quantize.quantize(x)
    >>> q.codes.dtype, q.codes.shape, q.scales.shape
    (dtype('int8'), (2, 256), (2, 1))
    >>> error = jnp.abs(quantize.dequantize(q) - x) / q.scales
    >>> float(jnp.max(error)) < 0.0157  # at most 1 - (126.5 / 127) ** 4
    True
  """
  if code not in CODES:
    raise ValueError(f"code={code!r}: expected one of {CODES}.")
  x = x.astype(jnp.float32)
  if scales is None:
    scales = block_absmax(x, block)
  # Elementwise in the leaf's own shape (the scales broadcast to it), so that
  # XLA can write the new codes over the old ones in place.
  q = x * _spread(jnp.where(scales > 0, 1 / scales, 0.0), x.shape[-1], block)
  if code == "linear":
    q = q * 127
    if seed is not None:
      index = jnp.floor(q + _hash_uniform(x, seed, global_shape, offsets))
    else:
      index = jnp.round(q)
    codes = jnp.clip(index, -127, 127).astype(jnp.int8)
  elif code == "power":
    dither = None if seed is None else _weyl_uniform(x, seed, global_shape, offsets, offset=0.5)
    codes = _power_codes(q, dither=dither)
  else:
    # Nearest: the upper value past the midpoint.
    dither = jnp.float32(0.5) if seed is None else _weyl_uniform(x, seed, global_shape, offsets)
    codes = (_dynamic_index(q, dither) - 128).astype(jnp.int8)
  return QuantizedMoment(codes, scales, code)


def _quantized_ema(
    q: QuantizedMoment,
    g: jax.Array,
    b1: Any,
    seed: jax.Array | None = None,
    *,
    block: int | None = None,
    global_shape: tuple[int, ...] | None = None,
    offsets: tuple[Any, ...] | None = None,
) -> QuantizedMoment:
  """``quantize((1 - b1) * g + b1 * dequantize(q))`` in ``q``'s map, without
  writing the new ``m`` out: the block maxima and the codes each recompute
  it inside their own fusion.

  For the power map the codes are computed as ``a * g + b * k**4`` with the
  per-block factors ``a = (1 - b1) 127**4 / scale`` and
  ``b = b1 * old_scale / scale`` (the new ``m`` over its block maximum,
  times ``127**4``), whose fourth root is ``127 |q| ** (1 / 4)``: three
  multiplies per element fewer than forming ``m`` and dividing it, 12-16 %
  of the codes' pass on CPU. With a ``seed`` (the update always passes
  one) the fourth root is rounded stochastically (:func:`_power_codes`),
  else to nearest.
  """
  g = g.astype(jnp.float32)
  n = g.shape[-1]
  if q.code != "power":
    m = (1 - b1) * g + b1 * dequantize(q, block=block)
    scales = block_absmax(m, block)
    return quantize(m, q.code, seed, block=block,
                    global_shape=global_shape, offsets=offsets, scales=scales)
  # dequantize's values, as k * k * k * |k|: with _signed_fourth's sign-bit
  # xor here, LLVM stopped vectorising the maxima's loop (8x the code).
  k = q.codes.astype(jnp.float32)
  m = (1 - b1) * g + b1 * _scaled(k * k * k * jnp.abs(k), q.scales * (1 / 127**4), block)
  scales = block_absmax(m, block)
  inverse = jnp.where(scales > 0, 1 / scales, 0.0)
  a = _spread((1 - b1) * 127.0**4 * inverse, n, block)
  b = _spread(b1 * q.scales * inverse, n, block)
  y = a * g + b * _signed_fourth(k)
  dither = None if seed is None else _weyl_uniform(g, seed, global_shape, offsets, offset=0.5)
  return QuantizedMoment(_power_codes(y, scaled=True, dither=dither), scales, "power")


def _spread(per_block: jax.Array, n: int, block: int | None) -> jax.Array:
  """Per-block values ``[..., num_blocks]`` repeated over each block's
  elements: ``[..., n]``."""
  block = block or block_size(n)
  full = jnp.broadcast_to(per_block[..., None], per_block.shape + (block,))
  return full.reshape(per_block.shape[:-1] + (per_block.shape[-1] * block,))[..., :n]


def dequantize(q: QuantizedMoment, *, block: int | None = None) -> jax.Array:
  """The float32 array ``q`` stands for, decoded with its own map
  (``q.code``): the inverse of :func:`quantize` up to its rounding;
  ``block`` as given to :func:`quantize`."""
  code = q.code
  k = q.codes.astype(jnp.float32)
  # The maps' constant factors go on the per-block scales, not on each element.
  if code == "linear":
    values, scales = k, q.scales * (1 / 127)
  elif code == "power":
    values, scales = _signed_fourth(k), q.scales * (1 / 127**4)
  else:
    values, scales = _dynamic_value(k + 128), q.scales
  return _scaled(values, scales, block)


def _scaled(values: jax.Array, scales: jax.Array, block: int | None) -> jax.Array:
  """``values`` times their block's entry of ``scales``."""
  return values * _spread(scales, values.shape[-1], block)


def _signed_fourth(k: jax.Array) -> jax.Array:
  """``sign(k) k**4`` of integer-valued float32 ``k`` (``|k| <= 127``), as
  ``(k * k) * (k * k)`` with ``k``'s sign bit xored in: one vector operation
  fewer than ``k * k * k * |k|`` (the xor and the and are one ternary-logic
  instruction), and the same float32: ``k * k`` and ``k * k * k`` are exact,
  so both are ``k**4`` rounded once."""
  k2 = k * k
  sign = jax.lax.bitcast_convert_type(k, jnp.int32) & jnp.int32(-(2**31))
  return jax.lax.bitcast_convert_type(
      jax.lax.bitcast_convert_type(k2 * k2, jnp.int32) ^ sign, jnp.float32)
