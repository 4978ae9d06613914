"""Which block of Adam-mini does each parameter belong to, and why.

Adam-mini keeps one second-moment value ``v`` per *block* of parameters. This
module is the single place that decides the blocks: a :class:`BlockSpec` per
leaf, derived once from the leaf's pytree path and shape by an ordered table of
:class:`Rule` s (first match wins), overridable through :class:`BlockRules` or
a pytree of :class:`BlockSpec`.

Roles (what a rule maps a path to), written for the Flax layout of one layer
(kernels are ``[in, out]``; see ``REFERENCE.md``):

============  ==============================================  =====================
role          one ``v`` per                                   kernel -> ``v`` shape
============  ==============================================  =====================
``element``   element (biases: plain Adam)                    ``[...]`` -> ``[...]``
``heads``     attention head (query, key, fused qkv)          ``[in, H*D]`` -> ``[H]``
                                                              ``[in, H, D]`` -> ``[H]``
``token``     token (embedding table rows)                    ``[vocab, d]`` -> ``[vocab]``
``value``     output neuron of a value projection             ``[in, H, D]`` -> ``[H, D]``
``neuron``    output neuron (MLP, attention out, lm_head)     ``[..., out]`` -> ``[out]``
``tensor``    whole tensor (norm scales, other small leaves)  ``[...]`` -> ``[]``
============  ==============================================  =====================

``heads``, ``token``, ``value`` and ``neuron`` only claim leaves with at least
two (non-layer) axes; a smaller leaf under such a module (a norm scale inside
``mlp``, BERT's ``embeddings/LayerNorm``) goes on down the table, which is where
the official package raises ``IndexError``. Leaves no rule claims get
``neuron`` (two or more axes) or ``tensor`` (fewer).

A rule may also name its kernel's *layout* (:class:`Rule`: one letter per
axis, ``"n i h"`` for Gemma's heads-first einsums) and a fused kernel's
*parts* (``"q,k,v"``: each part gets its own blocks, :class:`Part`). The
libraries people train with (gemma, Hugging Face Flax, keras-hub, MaxText)
are described that way in :data:`DEFAULT_RULES`. Layouts are written for Flax
kernels; matrices named ``weight`` as PyTorch stores them (a PyTorch
checkpoint read with safetensors, Equinox) are their transpose, read so under
``BlockRules(weight_layout="torch")``. A haliax tree (Levanter) says
what its axes are: the weight of an ``hnn.Linear`` is laid out as the
module's ``In`` and ``Out`` name it (its heads by :data:`NAMED_AXIS_LETTERS`),
and an ``hnn.Stacked``'s layer axis is a stack axis (``_haliax``). A leaf
whose layout the rules cannot confirm from its shape, ``head_dim`` and the head counts of
:class:`BlockRules` raises a ``ValueError`` that says how to settle it; it is
never guessed.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Union

import jax
import numpy as np

from optax_mini import _haliax, _penzai

__all__ = [
    "ROLES",
    "HeadDim",
    "DEFAULT_RULES",
    "PART_ROLES",
    "Part",
    "BlockSpec",
    "BlockRules",
    "Rule",
    "block_spec_for",
    "block_specs",
    "normalize_path",
]

ROLES = ("element", "heads", "token", "value", "neuron", "tensor")

#: ``head_dim``: one head size for the whole model, or one per tower, as a
#: mapping from path patterns (matched as :class:`Rule` patterns, first match
#: wins) to sizes: ``{"vision_encoder": 72, "decoder": 128}``.
HeadDim = Union[int, Mapping[str, Union[int, None]], None]
# Roles that describe a kernel; they claim only leaves with >= 2 logical axes.
_KERNEL_ROLES = frozenset({"heads", "token", "value", "neuron"})


class Part(NamedTuple):
  """One part of a fused kernel, a run along :attr:`BlockSpec.part_axis`.

  Attributes:
    name: a label (``"q"``, ``"k"``, ``"v"``, ``"gate"``, ``"up"``).
    size: its extent along the part axis (within one repeat).
    head_dim: if set, the part's run is cut into heads of ``head_dim``, each
      averaged whole (query/key: one ``v`` per head); ``None``: every
      position along the part axis keeps its own blocks (value, MLP).
    reduce_axes: further axes of the leaf averaged for this part only, e.g.
      ``head_dim`` for the ``k`` part of Gemma's ``kv_einsum [2, K, D, H]``.
  """

  name: str
  size: int
  head_dim: int | None = None
  reduce_axes: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """How one parameter leaf is cut into Adam-mini blocks.

  Every axis of the leaf is either *averaged* (it lies inside a block) or
  *kept* (it indexes blocks, so it appears in ``v``'s shape). Optionally one
  axis of size ``n * head_dim`` is viewed as ``[n, head_dim]`` (head-major, as
  ``x.reshape(..., n, head_dim)`` does): its ``head_dim`` part is averaged and
  its ``n`` part kept, which is how flat ``[in, heads*head_dim]`` query/key
  kernels get one ``v`` per head.

  A *fused* kernel (q, k and v in one matrix; gate and up in one) cuts one
  axis, ``part_axis``, into consecutive :class:`Part` s with blocks of their
  own: ``reduce_axes`` are then averaged by every part, and each part adds
  its own. The parts may repeat along the axis (``sum(part.size)`` divides
  it): BLOOM's ``query_key_value`` output is ``[heads, 3, head_dim]``, i.e.
  ``(q, k, v)`` repeated once per head. ``v`` keeps the leaf's axes less the
  common ``reduce_axes``; a part that averages more (a query head's
  ``head_dim``) holds its one value repeated over them, so ``v`` still
  shards like the kernel and the update stays one broadcast multiply.

  Attributes:
    reduce_axes: axes averaged inside each block (of every part, if fused).
    head_axis: the axis split into ``[n, head_dim]``, or ``None``.
    head_dim: size of one head along ``head_axis``.
    stack_axes: layer-stack axes (``nnx.scan``/``nnx.vmap``: 0, MaxText: 1).
      They are always kept: giving one that is also averaged is an error.
    role: a label shown by :func:`optax_mini.explain`.
    part_axis: the axis a fused kernel is cut along, or ``None``.
    parts: the :class:`Part` s along ``part_axis``, in order.

  In a pytree of specs passed as ``blocks=``, axes index the leaf as it is. In
  a :class:`Rule`, axes index one layer's leaf (stack axes removed) and are
  shifted onto the stacked leaf automatically.

  Example:
    >>> from optax_mini import BlockSpec
    >>> spec = BlockSpec(reduce_axes=(0,), head_axis=1, head_dim=8)
    >>> spec.v_shape((32, 64))  # flat q kernel, 8 heads of 8
    (8,)
    >>> kv = BlockSpec(reduce_axes=(2,), part_axis=0, parts=(
    ...     Part("k", 1, reduce_axes=(3,)), Part("v", 1)))
    >>> layout = kv.layout((2, 4, 64, 16))  # Gemma's kv_einsum [2, K, D, H]
    >>> layout.v_shape, layout.num_blocks  # k: one per head, v: per neuron
    ((2, 4, 16), 68)
  """

  reduce_axes: tuple[int, ...] = ()
  head_axis: int | None = None
  head_dim: int | None = None
  stack_axes: tuple[int, ...] = ()
  role: str = "custom"
  part_axis: int | None = None
  parts: tuple[Part, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "reduce_axes", _int_tuple(self.reduce_axes))
    object.__setattr__(self, "stack_axes", _int_tuple(self.stack_axes))
    parts = tuple(p if isinstance(p, Part) else Part(*p) for p in self.parts)
    parts = tuple(p._replace(reduce_axes=_int_tuple(p.reduce_axes)) for p in parts)
    object.__setattr__(self, "parts", parts)
    if (self.head_axis is None) != (self.head_dim is None):
      raise ValueError(
          "BlockSpec: head_axis and head_dim go together; got "
          f"head_axis={self.head_axis}, head_dim={self.head_dim}."
      )
    if (self.part_axis is None) != (not self.parts):
      raise ValueError(
          "BlockSpec: part_axis and parts go together; got "
          f"part_axis={self.part_axis}, parts={self.parts}."
      )
    if self.parts and self.head_axis is not None:
      raise ValueError(
          "BlockSpec: a fused spec (parts=) splits heads inside its parts "
          "(Part.head_dim), not with head_axis."
      )

  def layout(self, shape: Sequence[int], path: str = "<leaf>") -> Layout:
    """Checks this spec against a leaf shape and returns the reduction plan.

    Args:
      shape: the leaf's shape.
      path: the leaf's path, for error messages.

    Returns:
      A :class:`Layout`.

    Raises:
      ValueError: naming ``path`` and ``shape`` when the spec does not fit.
    """
    return _layout(self, tuple(int(d) for d in shape), path)

  def v_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
    """Shape of this leaf's second moment ``v`` (one entry per block)."""
    return self.layout(shape).v_shape


class Layout(NamedTuple):
  """A :class:`BlockSpec` resolved against one shape (static Python data).

  ``view_shape`` is the leaf's shape with the head axis split, ``view_reduce``
  the axes of that view averaged per block, ``v_shape`` the view with those
  axes removed, ``block_size`` the number of elements in one block.

  ``num_blocks`` counts the distinct blocks (learning rates). It equals the
  size of ``v`` except for fused kernels, whose query/key parts repeat each
  head's value over the axes only they average (``parts``).

  The same reduction in two stages, as the transform computes it:
  ``shape_reduce`` are the axes of the leaf's own shape averaged whole (no
  reshape of the full-size array); ``rest_view`` is what remains of the view
  after them and ``rest_reduce`` the axes of it still to average (the
  ``head_dim`` part of a split head axis), a reduction over a v-sized array.
  """

  view_shape: tuple[int, ...]
  view_reduce: tuple[int, ...]
  v_shape: tuple[int, ...]
  keepdims_shape: tuple[int, ...]
  block_size: int
  shape_reduce: tuple[int, ...] = ()
  rest_view: tuple[int, ...] = ()
  rest_reduce: tuple[int, ...] = ()
  num_blocks: int = 0
  # The leaf axis each axis of v comes from (a split head axis: its heads).
  v_axes: tuple[int, ...] = ()
  # Fused kernels: the part axis in v's shape, the run one repeat spans, and
  # per part (offset, size, head_dim, axes of v it also averages, elements
  # per block).
  part_axis: int | None = None
  part_period: int = 0
  parts: tuple[tuple[int, int, int | None, tuple[int, ...], int], ...] = ()


def _int_tuple(axes: Any) -> tuple[int, ...]:
  if isinstance(axes, (int, np.integer)):
    return (int(axes),)
  return tuple(int(a) for a in axes)


def _layout(spec: BlockSpec, shape: tuple[int, ...], path: str) -> Layout:
  ndim = len(shape)

  def norm_axis(axis: int, what: str) -> int:
    if not -ndim <= axis < ndim:
      raise ValueError(
          f"{path}: shape {shape} has {ndim} axes, but the block spec's "
          f"{what} names axis {axis}. Expected axes in [{-ndim}, {ndim}); fix"
          " the BlockSpec (or the rule that produced it) for this leaf."
      )
    return axis % ndim

  reduce = tuple(norm_axis(a, "reduce_axes") for a in spec.reduce_axes)
  stack = tuple(norm_axis(a, "stack_axes") for a in spec.stack_axes)
  head = None if spec.head_axis is None else norm_axis(spec.head_axis, "head_axis")
  if len(set(reduce)) != len(reduce):
    raise ValueError(f"{path}: reduce_axes {spec.reduce_axes} repeats an axis.")
  if set(stack) & set(reduce) or (head is not None and head in stack):
    raise ValueError(
        f"{path}: shape {shape}: axes {sorted(set(stack))} are layer-stack "
        f"axes, which are never averaged, but the block spec averages axes "
        f"{sorted(set(reduce) | ({head} if head is not None else set()))}. "
        "Remove the stack axes from reduce_axes/head_axis."
    )
  if spec.parts:
    return _fused_layout(spec, shape, path, reduce, stack, norm_axis)
  if head is not None:
    if head in reduce:
      raise ValueError(
          f"{path}: head_axis {spec.head_axis} is also in reduce_axes "
          f"{spec.reduce_axes}; an axis is either split into heads or averaged."
      )
    head_dim = spec.head_dim
    if (
        not isinstance(head_dim, (int, np.integer))
        or head_dim <= 0
        or shape[head] % head_dim
    ):
      raise ValueError(
          f"{path}: shape {shape}: head_dim={head_dim} does not divide axis "
          f"{head} (size {shape[head]}) into whole heads. Expected a positive "
          f"divisor of {shape[head]} (the size of one attention head); pass "
          "the model's head_dim, or override this leaf with blocks=."
      )
  view_shape: list[int] = []
  view_reduce: list[int] = []
  rest_view: list[int] = []
  rest_reduce: list[int] = []
  for axis, size in enumerate(shape):
    if axis == head:
      view_shape += [size // spec.head_dim, spec.head_dim]
      view_reduce.append(len(view_shape) - 1)
      rest_view += [size // spec.head_dim, spec.head_dim]
      rest_reduce.append(len(rest_view) - 1)
    else:
      view_shape.append(size)
      if axis in reduce:
        view_reduce.append(len(view_shape) - 1)
      else:
        rest_view.append(size)
  v_shape = tuple(d for i, d in enumerate(view_shape) if i not in view_reduce)
  keepdims = tuple(1 if i in view_reduce else d for i, d in enumerate(view_shape))
  block_size = math.prod(view_shape[i] for i in view_reduce)
  return Layout(
      tuple(view_shape), tuple(view_reduce), v_shape, keepdims, block_size,
      shape_reduce=tuple(sorted(reduce)), rest_view=tuple(rest_view),
      rest_reduce=tuple(rest_reduce), num_blocks=math.prod(v_shape),
      v_axes=tuple(a for a in range(ndim) if a not in reduce),
  )


def _fused_layout(spec, shape, path, reduce, stack, norm_axis) -> Layout:
  ndim = len(shape)
  axis = norm_axis(spec.part_axis, "part_axis")
  if axis in reduce or axis in stack:
    raise ValueError(
        f"{path}: shape {shape}: part_axis {spec.part_axis} is cut into parts "
        f"{[p.name for p in spec.parts]}, so it cannot also be averaged or a "
        "layer-stack axis."
    )
  period = sum(p.size for p in spec.parts)
  if period <= 0 or any(p.size <= 0 for p in spec.parts) or shape[axis] % period:
    raise ValueError(
        f"{path}: shape {shape}: parts {[(p.name, p.size) for p in spec.parts]} "
        f"span {period} along axis {axis}, which does not divide its size "
        f"{shape[axis]} into whole repeats. Fix the part sizes (or the rule's "
        "layout) for this leaf."
    )
  kept = [a for a in range(ndim) if a not in reduce]
  v_shape = tuple(shape[a] for a in kept)
  v_axis = kept.index(axis)
  common = math.prod(shape[a] for a in reduce)
  planned, offset, num_blocks = [], 0, 0
  groups = shape[axis] // period
  for part in spec.parts:
    extra = tuple(sorted({norm_axis(a, f"part {part.name!r} reduce_axes") for a in part.reduce_axes}))
    if set(extra) & (set(stack) | set(reduce) | {axis}):
      raise ValueError(
          f"{path}: shape {shape}: part {part.name!r} averages axes {extra}, but "
          f"these are layer-stack axes, the part axis {axis}, or averaged by "
          f"every part already (reduce_axes {tuple(reduce)})."
      )
    hd = part.head_dim
    if hd is not None and (hd <= 0 or part.size % hd):
      raise ValueError(
          f"{path}: shape {shape}: part {part.name!r} has size {part.size}, which "
          f"head_dim={hd} does not divide into whole heads."
      )
    per_block = common * math.prod(shape[a] for a in extra) * (hd or 1)
    kept_here = math.prod(
        shape[a] for a in kept if a != axis and a not in extra
    ) * groups * (part.size // (hd or 1))
    num_blocks += kept_here
    planned.append((offset, part.size, hd, tuple(kept.index(a) for a in extra), per_block))
    offset += part.size
  keepdims = tuple(1 if a in reduce else d for a, d in enumerate(shape))
  return Layout(
      shape, tuple(sorted(reduce)), v_shape, keepdims,
      max(p[-1] for p in planned), shape_reduce=tuple(sorted(reduce)),
      num_blocks=num_blocks, part_axis=v_axis, part_period=period, parts=tuple(planned),
      v_axes=tuple(kept),
  )


class Rule(NamedTuple):
  """Maps parameter paths to a role (and the kernel's layout) or a :class:`BlockSpec`.

  ``pattern`` is a ``/``-separated sequence of path-component globs
  (``fnmatch``, case-insensitive). It matches a leaf when it equals a run of
  consecutive *whole* components of the leaf's normalised path, anywhere in
  it: ``"q_proj"`` matches ``layers/3/self_attn/q_proj/kernel`` but not
  ``layers/3/self_attn/q_proj_lora/kernel``; ``"attn/*/kernel"`` matches
  ``attn/query/kernel``.

  ``target`` is one of :data:`ROLES`, the parts of a fused kernel as names
  from :data:`PART_ROLES` joined by commas (``"q,k,v"``, ``"k,v"``,
  ``"gate,up"``), or a :class:`BlockSpec` written for one layer's leaf.

  ``layout`` names what each axis of one layer's leaf is, one letter per axis
  (parentheses group the factors of one axis, outermost first):

  ====  ===========================================================
  ``i``  input: averaged by every kernel role
  ``o``  output neuron (or token): kept
  ``n``  attention heads: kept
  ``h``  ``head_dim``: averaged by ``heads`` (query/key), kept by ``value``
  ``p``  the parts of a fused kernel (``target`` lists them)
  ``e``  the experts of a mixture-of-experts kernel: kept by every role
  ====  ===========================================================

  e.g. ``"i (n h)"`` (a flat ``[in, heads*head_dim]`` query kernel),
  ``"n i h"`` (Gemma's heads-first ``q_einsum``), ``"(p n h) i"`` (GPT-2's
  ``[out, in]`` fused ``c_attn``), ``"i (n p h)"`` (BLOOM's per-head
  interleaved ``query_key_value``). A part may be named more than once, the
  parts of one name sharing its heads (CodeGen's four groups of q | v | k:
  ``"q,v,k,q,v,k,q,v,k,q,v,k"``). A tuple of layouts lists candidates: the
  one the shape fits is used, and a leaf that fits several with different
  blocks is an error that says how to settle it (never a guess). A layout
  given in ``BlockRules(rules=...)`` describes the leaf as it is stored; the
  :data:`DEFAULT_RULES` and the role's usual layouts describe Flax kernels,
  and are read reversed for a PyTorch-layout ``weight``
  (``BlockRules.weight_layout``).
  ``None``: the role's usual layouts for the leaf's rank (2-D kernels are
  ``[in, out]``; a 3-D query/key/value kernel may be ``"i n h"`` or
  ``"n i h"``, which head counts settle: ``BlockRules(num_heads=...)``).

  ``where`` is a check on the layout's sizes that the shape must pass, e.g.
  ``"pnh == 3*i"`` (a fused qkv kernel has three times as many outputs as
  inputs) or ``"o > i"``; a letter stands for the product of its sizes, and
  a check naming a letter a candidate layout lacks does not apply to it.

  ``beside`` is a pattern some parameter of the same tree must match
  for the rule to apply at all: a model's signature, where one path means
  different layouts in different libraries. HF's BLOOM interleaves q, k and
  v per head in ``self_attention/query_key_value``; EasyDeL's Falcon, under
  the same path and shape, keeps ``[q | k | v]`` runs. Only BLOOM has a
  ``word_embeddings_layernorm``, so the BLOOM rule is
  ``Rule("query_key_value/kernel", "q,k,v", "i (n p h)", beside=
  "word_embeddings_layernorm")``, and elsewhere the kernel raises. Such a
  rule needs the whole tree: :func:`block_spec_for`, which sees one leaf,
  skips it.

  Example:
    >>> from optax_mini import Rule, BlockSpec
    >>> Rule("c_attn", "heads").matches(("h", "0", "attn", "c_attn", "kernel"))
    True
    >>> Rule("my_qkv", "q,k,v", layout="i (p n h)").layout
    'i (p n h)'
  """

  pattern: str
  target: Union[str, BlockSpec]
  layout: Union[str, tuple[str, ...], None] = None
  where: str | None = None
  beside: str | None = None

  def matches(self, components: Sequence[str]) -> bool:
    """Whether the pattern equals a run of whole path components."""
    return _pattern_matches(self.pattern, tuple(components))


class _ModelRule(Rule):
  """A rule read from a model (:func:`optax_mini.penzai_blocks`): one per
  parameter of the model, so one that matches no leaf of a tree (a frozen
  parameter left out of it) draws no warning; ``explain`` names it by
  ``source``, its pattern being the leaf's whole path."""

  __slots__ = ()
  source = "penzai_blocks"


class _StoredRule(Rule):
  """A default rule whose layout describes the leaf as stored, as a user
  rule's does: never read transposed for a PyTorch-named ``weight``. For a
  library that names its ``[in, out]`` kernels ``weight`` and keeps other
  layouts beside them (AXLearn), known by its signature (``beside``)."""

  __slots__ = ()


class _TorchConvRule(_StoredRule):
  """A default rule for a PyTorch convolution's ``weight`` ``[out, in,
  (t,) k, k]`` (its window square): it claims a leaf of three or more axes
  whose last two are equal, in a tree read with ``weight_layout="torch"``."""

  __slots__ = ()


class _LeafRule(Rule):
  """A default rule for a parameter's own name: its pattern must end at the
  leaf (``latents``, never ``latents/kernel``, a module's)."""

  __slots__ = ()


class _KernelLeafRule(_LeafRule):
  """A :class:`_LeafRule` for a kernel's own name that must be the path's
  last component: Reformer's axial position_embeddings/weights/0 is a list
  of tables, not a Haiku kernel ``weights``."""

  __slots__ = ()


class _NearRule(Rule):
  """A default rule for a parameter's name or its module's: its pattern
  must end at the leaf or its parent (a bias ``attn/bias`` or T5's
  ``relative_attention_bias/embedding``, a table ``embed_tokens/weight``),
  never higher: AlphaFold's ``msa_row_attention_with_pair_bias`` and
  ``template_embedding`` hold whole layers."""

  __slots__ = ()


def _named_end(components: tuple[str, ...]) -> int:
  """The length of the path up to its last named component: a haliax
  ``NamedArray``'s array is a child ``0`` of the parameter
  (``token_embeddings/weight/0``)."""
  end = len(components)
  while end > 1 and components[end - 1].isdigit():
    end -= 1
  return end


class _BiasRule(Rule):
  """A bias's name (:data:`BIAS_PATTERNS`), matched as :func:`is_bias` does:
  the leaf's own, or its module's unless the leaf is a kernel."""

  __slots__ = ()


@functools.lru_cache(maxsize=64)
def _literal_parts(rules: BlockRules) -> tuple[frozenset[str], ...]:
  """For each of ``rules.all_rules()``, the components its pattern names
  without a wildcard: a leaf whose path lacks one of them cannot match (a
  quick test before :func:`_rule_matches`, for trees of many leaves)."""
  return tuple(
      frozenset(p for p in rule.pattern.lower().strip("/").split("/")
                if not any(ch in p for ch in "*?["))
      for rule in rules.all_rules()
  )


def _rule_matches(rule: Rule, components: tuple[str, ...]) -> bool:
  if isinstance(rule, _BiasRule):
    at = _bias_index(components)
    return at is not None and fnmatch.fnmatchcase(components[at], rule.pattern)
  if isinstance(rule, _KernelLeafRule):  # the last component, whatever it is
    return _pattern_matches(rule.pattern, components, len(components))
  if isinstance(rule, _LeafRule):  # the parameter's name (haliax's array index skipped)
    return _pattern_matches(rule.pattern, components, _named_end(components))
  if isinstance(rule, _NearRule):
    return _pattern_matches(rule.pattern, components, _named_end(components) - 1)
  return _pattern_matches(rule.pattern, components)


def _pattern_matches(pattern: str, components: tuple[str, ...], reaching: int = 0) -> bool:
  """Whether ``pattern`` equals a run of whole components that ends past
  index ``reaching - 1`` (``0``: anywhere).

  Every rule is tried on every leaf (a few hundred patterns for each of a
  model's leaves: a PyTorch checkpoint of Qwen3-30B-A3B has 18,867), so
  each pattern is compiled once into one regular expression over the
  components joined by a separator no name holds."""
  if not components:
    return False
  if reaching > 0:
    trailing = len(components) - reaching
    if trailing < 0:
      return False
  else:
    trailing = None
  regex = _pattern_regex(pattern, trailing)
  joined = _SEPARATOR.join(components)
  if regex is None or joined.count(_SEPARATOR) != len(components) - 1:
    return _pattern_matches_slowly(pattern, components, reaching)
  return regex.search(joined) is not None


#: Joins a path's components for :func:`_pattern_regex`.
_SEPARATOR = "\x00"


@functools.cache
def _pattern_regex(pattern: str, trailing: int | None) -> re.Pattern[str] | None:
  """``pattern`` (``/``-separated ``fnmatch`` components) as a regular
  expression over joined components: a run of whole components followed by
  at most ``trailing`` more (``None``: any number). ``None`` for a pattern
  with a character class other than letters, digits and ranges of them
  (``conv[0-9]*``), left to :func:`fnmatch.fnmatchcase`."""
  parts = [_component_regex(part) for part in pattern.lower().strip("/").split("/")]
  if None in parts:
    return None
  body = r"\x00".join(parts)
  tail = r"(?=\x00|\Z)" if trailing is None else rf"(?:\x00{_ANY_CHAR}*){{0,{trailing}}}\Z"
  return re.compile(rf"(?:\A|\x00){body}{tail}", re.DOTALL)


#: A character of a component: anything but :data:`_SEPARATOR`.
_ANY_CHAR = r"[^\x00]"


def _component_regex(part: str) -> str | None:
  """One ``fnmatch`` component as a regular expression that stays inside
  its component; ``None`` for a character class it does not translate."""
  out, i = [], 0
  while i < len(part):
    ch, i = part[i], i + 1
    if ch == "*":
      out.append(_ANY_CHAR + "*")
    elif ch == "?":
      out.append(_ANY_CHAR)
    elif ch == "[":
      end = part.find("]", i + 1)
      if end < 0:  # fnmatch: a "[" without its "]" is itself
        out.append(re.escape(ch))
        continue
      negated = part[i] == "!"
      chars = part[i + negated:end]
      ranges = re.fullmatch(r"(?:[a-z0-9](?:-[a-z0-9])?)+", chars)
      if ranges is None or any(a > b for a, b in re.findall(r"(.)-(.)", chars)):
        return None
      out.append((r"[^\x00" if negated else "[") + chars + "]")
      i = end + 1
    else:
      out.append(re.escape(ch))
  return "".join(out)


def _pattern_matches_slowly(pattern: str, components: tuple[str, ...], reaching: int = 0) -> bool:
  """:func:`_pattern_matches` component by component, with ``fnmatch``."""
  parts = tuple(p for p in pattern.lower().strip("/").split("/"))
  n = len(parts)
  for start in range(max(len(components) - n + 1, 0)):
    if start + n >= reaching and all(
        fnmatch.fnmatchcase(components[start + i], parts[i]) for i in range(n)
    ):
      return True
  return False


#: Names of a bias, the parameter's own or its module's (T5's
#: ``relative_attention_bias/embedding``): plain Adam, and no weight decay (the
#: official code checks "bias" first, for both). A deeper module's name does
#: not count: AlphaFold's ``msa_row_attention_with_pair_bias`` holds an
#: attention layer's kernels and norms. Keras calls a normalization
#: layer's bias ``beta``, Haiku ``offset``; Swin's and BEiT's relative
#: position tables are ``relative_position_bias_table`` (a bias to the
#: attention logits, and "bias" to the official substring match). Haiku's
#: ``Linear`` and ``Conv`` name their bias ``b`` (beside ``w``), as do
#: recurrentgemma's layers (its RG-LRU gates' ``b [blocks, width]``) and
#: Flax's NNX examples.
BIAS_PATTERNS = ("bias", "*_bias", "beta", "offset", "*_bias_table", "b")


#: LoRA factors whose names a bias pattern would claim (gemma's ``lora/b``).
LORA_FACTORS = ("lora/a", "lora/b")
#: quax's LoRA for Equinox (``quax.examples.lora``): a ``LoraArray`` in place
#: of a Linear's ``weight [out, in]``, its children ``_w`` (the frozen
#: weight), ``a [out, rank]`` and ``b [rank, in]`` (``W + a @ b``): each
#: factor's rows are its outputs.
QUAX_LORA_FACTORS = ("weight/a", "weight/b")


#: A Linear's or Dense's own parameter names: under a module named like a
#: bias, a layer that computes one (AlphaFold 3's adaptive norm
#: single_cond_bias/weights [in, out]), not a bias.
KERNEL_LEAVES = ("kernel", "w", "weights", "*_w", "*_weights")


def _bias_index(components: tuple[str, ...]) -> int | None:
  """The index of the component that names the leaf a bias: the leaf's own
  name, or its module's unless the leaf is a kernel (:data:`KERNEL_LEAVES`)."""
  end = _named_end(components)
  for at in (end - 1, end - 2):
    if at < 0 or (at == end - 2 and any(fnmatch.fnmatchcase(components[end - 1], p) for p in KERNEL_LEAVES)):
      continue
    if any(fnmatch.fnmatchcase(components[at], p) for p in BIAS_PATTERNS):
      return at
  return None


def is_bias(components: Sequence[str]) -> bool:
  """Whether a normalised path names a bias (see :data:`BIAS_PATTERNS`)."""
  components = tuple(components)
  return _bias_index(components) is not None and not any(
      _pattern_matches(p, components, len(components)) for p in LORA_FACTORS + QUAX_LORA_FACTORS)


def paired_biases(components: Sequence[tuple[str, ...]]) -> frozenset[tuple[str, ...]]:
  """The leaves named ``<x>_b`` beside a leaf ``<x>_w`` of the same module:
  a weight and its bias by name (AlphaFold's attention ``output_w`` and
  ``output_b``, ``gating_w`` and ``gating_b`` [heads, head_dim], which
  starts at ones). Only as a pair: ``q_b`` alone (jax-llm-examples'
  DeepSeek) is a kernel."""
  present = set(components)
  return frozenset(
      c for c in present
      if c and len(c[-1]) > 2 and c[-1].endswith("_b") and c[:-1] + (c[-1][:-2] + "_w",) in present
  )


def _rules(target: str, *patterns: str, near: bool = False) -> tuple[Rule, ...]:
  return tuple((_NearRule if near else Rule)(p, target) for p in patterns)


#: A normalization layer's scale: a module matching one of ``NORM_MODULES``
#: and a parameter named one of ``NORM_SCALES``. It has one axis (the
#: features) in every library; with more, and no layer-stack axis declared,
#: it is taken for a layer stack nobody declared (``nnx.vmap``/``nnx.scan``,
#: ``eqx.filter_vmap``, a scanned Linen module), and the partition raises
#: instead of averaging the layers together.
NORM_MODULES = ("*norm*", "ln", "ln_*", "*_ln", "bn", "bn_*", "*_bn")
NORM_SCALES = ("scale", "weight", "gamma", "g")


def is_norm_scale(components: Sequence[str]) -> bool:
  """A norm's scale: a scale's name under a norm module, or a ``kernel`` on
  the norm module itself (EasyLM's and LWM's RMSNorm name its weight so:
  ``attention_norm/kernel``; a Dense inside an adaptive norm, ``norm1/linear/
  kernel``, is no scale)."""
  if len(components) < 2:
    return False
  if components[-1] == "kernel":
    return any(fnmatch.fnmatchcase(components[-2], p) for p in NORM_MODULES)
  # The norm module is the scale's parent or grandparent (xlstm-jax's
  # ffn_norm/sharded/scale), not any ancestor: DBRX's norm_attn_norm holds
  # its attention, RoBERTa-PreLayerNorm's roberta_prelayernorm the model.
  return (
      any(fnmatch.fnmatchcase(components[-1], p) for p in NORM_SCALES)
      and any(fnmatch.fnmatchcase(c, p) for c in components[-3:-1] for p in NORM_MODULES)
  )


#: Parameter names (the last path component) that PyTorch, and libraries
#: that follow it (Equinox), give a layer's matrices: such a leaf may be the
#: transpose of the Flax kernel a rule describes (``BlockRules.weight_layout``).
WEIGHT_NAMES = ("weight", "*_weight", "weight_*")
#: ``BlockRules.weight_layout`` values; ``None``: settled by the shape or asked for.
WEIGHT_LAYOUTS = (None, "torch", "flax")
# Roles whose blocks follow the input/output orientation of a kernel
# (``token`` tables are [vocab, dim] in every library; ``tensor`` and
# ``element`` do not depend on axes).
_ORIENTED_ROLES = frozenset({"heads", "value", "neuron"})


def _is_weight_name(components: Sequence[str]) -> bool:
  return bool(components) and any(fnmatch.fnmatchcase(components[-1], p) for p in WEIGHT_NAMES)


def _layout_text(groups: Sequence[str]) -> str:
  """``("i", "nh")`` -> ``"i (n h)"``."""
  return " ".join(g if len(g) == 1 else f"({' '.join(g)})" for g in groups)


def _transposed(layout: str) -> str:
  """A layout with its axes in reverse order, as PyTorch stores the Flax
  kernel it describes: ``"i (n h)"`` -> ``"(n h) i"``, ``"i i i o"`` (a
  ``[kh, kw, in, out]`` convolution) -> ``"o i i i"`` (``[out, in, kh, kw]``).
  A leading experts axis stays first: ``"e i o"`` -> ``"e o i"`` (JetMoE's
  and Granite MoE's ``[experts, out, in]``, applied as ``F.linear(x, w[e])``)."""
  groups = _parse_layout(layout)
  if len(groups) > 2 and groups[0] == "e":
    return _layout_text(groups[:1] + tuple(reversed(groups[1:])))
  return _layout_text(tuple(reversed(groups)))


#: The role of each part name a fused kernel's rule may use: ``q`` and ``k``
#: one v per head, ``v`` one per output neuron (one block under
#: ``BlockRules(value_as_one_block=True)``), ``gate`` and ``up`` (an MLP's,
#: or a query's output gate: ``"q,gate"``) ``"output"``, one v per output
#: neuron whatever the switches.
PART_ROLES: dict[str, str] = {
    "q": "heads", "k": "heads", "v": "value", "gate": "output", "up": "output",
}

#: What an output axis of a haliax weight is by its name (``fnmatch``
#: patterns, first match wins), read for query/key/value and fused kernels:
#: a head's size (``h``), attention heads (``n``: Levanter's ``heads``,
#: ``kv_heads``, ``kv_head``, ``q_heads_per_group``), the parts of a fused
#: kernel (``p``: GPT-2's ``qkv``). Any other output axis is an output
#: neuron (``o``); input axes are ``i`` whatever their names.
NAMED_AXIS_LETTERS: tuple[tuple[str, str], ...] = (
    ("*head_size", "h"), ("*head_dim", "h"),
    ("*heads*", "n"), ("*_head", "n"),
    ("qkv", "p"), ("kv", "p"),
)

#: Path components that name a mixture-of-experts module (MaxText's
#: ``MoeBlock_0`` and Qwen3-Next's ``routed_experts``, Gemma 4's ``moe``,
#: ``experts``): the kernels stored on it directly have the experts first
#: (``e``).
MOE_MODULES = ("*moe*", "*experts")

#: The layouts of MLP (and expert) kernels by rank: ``[in, out]``, a mixture
#: of experts' ``[experts, in, out]``, a convolution's ``[kh, kw, in, out]``.
MLP_LAYOUTS = ("i o", "e i o", "i i i o")
#: Path components that name a convolution (Flax's ``Conv_0``, ``conv1``,
#: ``patch_conv``): a 3-D kernel under one is ``[k, in, out]``, one v per
#: output channel, whatever its sizes (the default reading of an unknown
#: 3-D kernel is otherwise checked: see :func:`_check_default_is_sure`).
CONV_MODULES = ("*conv*",)
#: A kernel of four or more axes whose leading (spatial) axes are equal and
#: at most this long, ``[k, k, in, out]``, is read as a convolution under any
#: name (keras-hub's 1x1 ``se_expand``, ``projection``): no attention or
#: experts' layout has a square window of so few heads or experts in front.
MAX_CONV_WINDOW = 16
#: Depthwise convolution kernels (Keras' ``DepthwiseConv2D`` and
#: ``SeparableConv2D``'s ``depthwise_kernel``, EfficientNet's ``dwconv``,
#: ConvNeXt's ``dwconv``): Keras lays them out ``[kh, kw, in, multiplier]``,
#: each input channel's filters its own outputs, so both last axes index
#: output channels; Flax's grouped ``[kh, kw, 1, in * multiplier]`` reads the
#: same way (its second-to-last axis has size one).
DEPTHWISE_KERNELS = ("depthwise_kernel", "*depthwise*/kernel", "*dwconv*/kernel", "*dw_conv*/kernel",
                     "*_dw/kernel", "attn/*_down_conv/kernel")
DEPTHWISE_LAYOUTS = ("i o", "i o o", "i i o o", "i i i o o")
#: Keras' transposed convolutions (``Conv2DTranspose``, named
#: ``conv2d_transpose`` by default) store ``[kh, kw, out, in]`` (Flax's
#: ``ConvTranspose``: ``[kh, kw, in, out]``, the default reading).
KERAS_CONV_TRANSPOSE = ("conv1d_transpose*/kernel", "conv2d_transpose*/kernel", "conv3d_transpose*/kernel")
KERAS_CONV_TRANSPOSE_LAYOUTS = ("i o i", "i i o i", "i i i o i")
#: LoRA factors by rank: A maps the adapted kernel's inputs (``[in]``, or
#: an attention output's ``[heads, head_dim]``) to the rank, B the rank to
#: its outputs (``[out]``, or a query's ``[heads, head_dim]``).
LORA_A_LAYOUTS = ("i o", "i i o", "i i i o")
LORA_B_LAYOUTS = ("i o", "i o o", "i o o o")
#: Keras' LoRA A of an EinsumDense, ``kernel.shape[:-1] + (rank,)``: the
#: adapted kernel's input, its heads (kept, either side of the input: the
#: size check puts them on the shorter axis) and the rank; 4-D and 5-D are
#: convolutions' ``[window..., in, rank]``.
KERAS_LORA_A_LAYOUTS = ("i o", "n i o", "i n o", "i i i o", "i i i i o")
#: Keras layers whose LoRA A contracts every axis but the rank: attention
#: outputs (``[heads, head_dim, rank]``) and convolutions by their names.
KERAS_LORA_CONTRACTED = ("attention_output", "o_proj", "out_proj", "output_proj", "out")
KERAS_CONVS = ("conv*", "*_conv", "*_conv_*", "*conv[0-9]*", "patch_embedding")
#: openpi's LoRA factors of Gemma's einsums, A and B alike (each keeps the
#: einsum's leading axes; see the rule).
OPENPI_LORA_LAYOUTS = {
    "q_einsum": "o i o", "k_einsum": "o i o", "kv_einsum": "o o i o", "qkv_einsum": "o o i o",
    "attn_vec_einsum": "i i o",
}
#: The size check on an experts axis: no more experts than input features
#: (DeepSeek-V3: 256 experts of 7168 inputs; Qwen3-Next's down projections
#: 512 of 512). A kernel that fails it is no ``[experts, in, out]``
#: (MaxText's fused ``mlp/wi`` is ``[in, gate|up, out]``) and raises instead.
EXPERTS_CHECK = "e <= i"

#: The names of parameters that are arrays of learned vectors, not kernels
#: (matched as the leaf's own name only: see :class:`_LeafRule`).
LEARNED_VECTORS = ("prompt", "soft_prompt", "latents", "queries", "query_tokens", "*_tokens",
                   "registers", "codebook", "bottleneck")
#: The same as a PyTorch port's ``nn.Embedding`` of learned tokens (scenic's
#: SAM ``mask_tokens.weight [4, dim]``, ``iou_token.weight [1, dim]``): a
#: table, ``[n, dim]`` in either framework.
PORTED_TOKEN_TABLES = ("*_tokens/weight", "*_token/weight")

#: Names of learned position tables (HF's ViT and DINOv2
#: ``position_embeddings``, big_vision's ``pos_embedding``, ``pos_embed``,
#: ``posembed_input``), and their layouts by rank: every axis but the last
#: (the features) indexes positions, so each position is a block of its own.
POSITION_TABLES = ("*pos_emb*", "*posemb*", "*position_emb*")
POSITION_TABLE_LAYOUTS = ("o i", "o o i", "o o o i")

#: A leaf only AXLearn's trees hold: its attention's input projection
#: (``i_proj/q_proj/weight``, RoFormer's ``i_proj/i_proj/qkv_proj/weight``).
AXLEARN_SIGNATURE = "i_proj/*_proj/weight"


def _per_expert(name: str) -> tuple[str, str]:
  """``name`` and its per-expert copies (openpi's pi0 holds its action
  expert's einsums beside the VLM's as ``q_einsum_1``, ``kv_einsum_1``)."""
  return (name, f"{name}_[0-9]*")


# Flax's DenseGeneral/LinearGeneral query/key/value kernels: [in, heads, head_dim].
_IN_HEADS = "i n h"
# Einsum kernels with heads first (Gemma in every library): [heads, in, head_dim].
_HEADS_IN = "n i h"

#: The default partition, in order; first match wins. It is the official
#: v1.1.1 partition (REFERENCE.md) on whole path components, plus the layouts
#: of the JAX libraries people train with (each rule says whose), so that
#: their trees partition as the official rules intend. A leaf whose layout
#: the rules cannot confirm from its shape raises instead of being guessed.
DEFAULT_RULES: tuple[Rule, ...] = (
    # gemma's gm.nn.LoRA: lora/a [in..., rank], lora/b [rank, out...] (its
    # B is no Haiku bias "b"): before the biases.
    *(Rule(name, "neuron", layouts) for name, layouts in zip(LORA_FACTORS, (LORA_A_LAYOUTS, LORA_B_LAYOUTS))),
    *(Rule(name, "neuron", ("o i", "e o i")) for name in QUAX_LORA_FACTORS),
    # (its _w, under stop_gradient, has zero gradients: one v per output row,
    # so that it needs no head_dim under a query)
    Rule("weight/_w", "neuron", ("o i", "e o i")),
    # Official: any name containing "bias" is plain Adam, checked first.
    *(_BiasRule(p, "element") for p in BIAS_PATTERNS),
    # openpi's LoRA over Gemma's einsums (lora.Einsum, lora.FeedForward):
    # A is the weight with its last axis the rank, B with its second to
    # last, so both keep the einsum's leading axes (heads, k|v or gate|up
    # parts: "BTD,NDL->BTNL", then "BTNL,NLH->BTNH"). One v per head (or
    # part) and rank direction for A, per output for B; the attention
    # output's heads are contracted ("BTNH,NHL->BTL", "BTL,NLD->BTD").
    *(
        Rule(f"{einsum}/{factor}", "neuron", ("i o", layout))
        for name, layout in OPENPI_LORA_LAYOUTS.items()
        for einsum in _per_expert(name)
        for factor in ("lora_a", "lora_b")
    ),
    *(Rule(f"gating_einsum_{factor}", "neuron", ("i o", "o i o")) for factor in ("lora_a", "lora_b")),
    # LoRA adapters: flax's nnx.LoRA (lora_a, lora_b), qwix's (tunix's)
    # <weight>_lora_a/_lora_b beside the weight they adapt, PEFT's lora_A /
    # lora_B modules. A is [in..., rank], B [rank, out...]: one v per output,
    # A's rank directions and B's outputs (the adapted layer's neurons). They
    # come first: they sit under the names of the layers they adapt
    # (q_proj/w_lora_a is no [in, heads*head_dim] query kernel).
    # qwix gives A every weight axis the einsum's input has too: MaxText's
    # experts wo ("BSEH,EHM->BSEM") get wo_lora_a [E, H, rank], one A per
    # expert (and wi_0 on its capacity path, "EBCM,EMH->EBCH").
    *(Rule(f"{module}/*_lora_a", "neuron", ("i o", "e i o"), where=EXPERTS_CHECK) for module in MOE_MODULES),
    *(Rule(name, "neuron", LORA_A_LAYOUTS) for name in ("lora_a", "*_lora_a")),
    *(Rule(name, "neuron", LORA_B_LAYOUTS) for name in ("lora_b", "*_lora_b")),
    # Keras' LoRA (enable_lora on Dense, EinsumDense, Conv and Embedding:
    # keras-hub's backbone.enable_lora): A lora_kernel_a is the adapted
    # kernel with its last axis the rank, B lora_kernel_b [rank, last],
    # einsum(equation, x, A) @ B. An EinsumDense query's A keeps its heads:
    # keras-hub Gemma's [heads, in, rank] ("btd,ndh->btnh"), Llama's and
    # MultiHeadAttention's [in, heads, rank] ("bqm,muh->bquh"): one v per
    # head and rank direction ("value": every axis but the input kept), and
    # B's outputs (the head_dim every head shares). An attention output's A
    # [heads, head_dim, rank] and a convolution's [window..., in, rank]
    # contract all but the rank.
    *(Rule(f"{name}/lora_kernel_a", "neuron", ("i o", "i i o")) for name in KERAS_LORA_CONTRACTED),
    *(Rule(f"{name}/lora_kernel_a", "neuron", LORA_A_LAYOUTS) for name in KERAS_CONVS),
    Rule("lora_kernel_a", "value", KERAS_LORA_A_LAYOUTS, where="n < i"),
    Rule("lora_kernel_b", "neuron", "i o"),
    # ... an Embedding's A [vocab, rank] is a table (one v per token, as the
    # table it adapts), its B [rank, dim] one per output.
    Rule("lora_embeddings_a", "token", "o i"),
    Rule("lora_embeddings_b", "neuron", "i o"),
    # (PEFT's, stored [rank, vocab] and [dim, rank]: F.embedding(x, A.T) @ B.T)
    Rule("lora_embedding_a", "token", "i o"),
    Rule("lora_embedding_b", "neuron", "o i"),
    # Apple's AXLearn names every parameter ``weight`` and mixes layouts in
    # one model: Linear [in, out] (feed_forward/linear1_0, linear2, the
    # router gate_weight [in, experts]), q/k/v_proj [model, heads, head_dim]
    # (attention.py: "btd,dnh->btnh"), o_proj [model, heads, head_dim] with
    # the OUTPUT first ("btnh,dnh->btd"), FusedQKVLinear's qkv_proj [3,
    # model, heads, head_dim] (parts first), FusedGroupedQKVLinear's [model,
    # q + 2 kv heads, head_dim], experts wi_*_weight [E, in, F] and wo_weight
    # [E, F, out], Embedding token_emb and LmHead lm_head [vocab, dim]. Read
    # as stored in a tree with its attention input projection (i_proj/q_proj,
    # i_proj/i_proj/qkv_proj), where no weight_layout fits every leaf.
    *(
        _StoredRule(pattern, target, layout, beside=AXLEARN_SIGNATURE)
        for pattern, target, layout in (
            ("emb/token_emb/weight", "token", "o i"),
            ("lm_head/weight", "token", "o i"),
            ("o_proj/weight", "neuron", "o i i"),
            ("i_proj/q_proj/weight", "heads", "i n h"),
            ("i_proj/k_proj/weight", "heads", "i n h"),
            ("i_proj/v_proj/weight", "value", "i n h"),
            ("i_proj/qkv_proj/weight", "q,k,v", ("p i n h", "i (p n) h")),
            ("feed_forward/linear*/weight", "neuron", "i o"),
            ("feed_forward/gate_weight", "neuron", "i o"),
            ("feed_forward/wi_*_weight", "neuron", "e i o"),
            ("feed_forward/wo_weight", "neuron", "e i o"),
        )
    ),
    # praxis (paxml): the attention's output projection post/w [model, heads,
    # head_dim], the output first ("BNH,DNH->BD"), one v per model dimension;
    # CombinedQKVProjectionLayer's combined_qkv/w [3, model, heads, head_dim].
    Rule("*attention/post/w", "neuron", "o i i"),
    Rule("combined_qkv/w", "q,k,v", "p i n h"),
    # Convolutions whose output channels are not (only) the last axis.
    *(Rule(name, "neuron", DEPTHWISE_LAYOUTS) for name in DEPTHWISE_KERNELS),
    *(Rule(name, "neuron", KERAS_CONV_TRANSPOSE_LAYOUTS) for name in KERAS_CONV_TRANSPOSE),
    # keras-hub's Qwen3.5 (Gated DeltaNet): the short depthwise convolution
    # linear_attn/conv1d_kernel [channels, k] (PyTorch's [channels, 1, k]):
    # one v per channel.
    Rule("linear_attn/conv1d_kernel", "neuron", ("o i", "o i i")),
    # Mixture-of-experts weights stored as parameters of the MoE module
    # itself, experts first: MaxText's MoeBlock wi_0/wi_1/wo [E, in, out],
    # Gemma 4's moe/linear [E, F, D] and fused gate|up gating_einsum
    # [E, 2, F, D] (its experts narrow: F < D, so no size check tells
    # Gemma's two gating layouts apart here). Each expert's neurons are
    # blocks of their own; the router [in, experts] is one v per expert.
    *(Rule(f"{module}/gating_einsum", "gate,up", "e p o i") for module in MOE_MODULES),
    *(
        Rule(f"{module}/{name}", "neuron", MLP_LAYOUTS, where=EXPERTS_CHECK)
        # (Grok-1's, Haiku: moe/linear, linear_v [E, d, F], linear_1 [E, F, d])
        for module in MOE_MODULES for name in ("wo", "linear", "linear_v", "linear_1")
    ),
    # keras-hub's Mixtral: experts/expert_feedforward_{gate,intermediate,
    # output}_dense [E, in, out]; its GPT-OSS: experts/gate_up_proj [E, in,
    # 2F] (gate and up interleaved; per output neuron either way) and
    # experts/down_proj.
    Rule("experts/expert_feedforward_*", "neuron", MLP_LAYOUTS, where=EXPERTS_CHECK),
    # HF transformers 5's fused experts under the same names, [E, out, in]
    # or [E, in, out]: laid out as their siblings say (EXPERT_WEIGHTS).
    Rule("experts/gate_up_proj", "gate,up", "e i (o p)", where=EXPERTS_CHECK),
    Rule("experts/up_proj", "neuron", "e i o", where=EXPERTS_CHECK),
    Rule("experts/down_proj", "neuron", "e i o", where=EXPERTS_CHECK),
    # HF Granite MoE's ParallelExperts under block_sparse_moe: input_linear
    # [E, 2F, d] and output_linear [E, d, F], F.linear(x, weight[e]) (read
    # as PyTorch stores an experts' kernel, its experts first).
    *(Rule(f"block_sparse_moe/{name}", "neuron", MLP_LAYOUTS, where=EXPERTS_CHECK)
      for name in ("input_linear", "output_linear")),
    # HF Aria's grouped GEMM experts, experts/fc1 [E, d, 2F] and fc2 [E, F,
    # d], applied as tokens @ weight[e]: [experts, in, out] as stored, though
    # named as a PyTorch weight.
    *(_StoredRule(f"experts/{name}/weight", "neuron", "e i o", where=EXPERTS_CHECK)
      for name in ("fc1", "fc2")),
    # A mixture's router mlp/gate: EasyDeL's DeepSeek-V2 and GLM-4-MoE store
    # it [experts, d] (PyTorch's orientation under a Flax kernel's name),
    # its other models [d, experts]; there are fewer experts than inputs
    # either way, which says which. Only in a tree with experts (an MLP's
    # widening gate kernel would fit the other reading).
    Rule("mlp/gate/kernel", "neuron", ("i o", "o i"), where="o < i", beside="mlp/experts"),
    # DBRX (HF, and its PyTorch checkpoint): ffn/experts/mlp/w1, v1 and w2
    # are raw [experts * ffn, d] parameters, viewed [experts, ffn, d]: w1
    # and v1 used transposed (x @ w1[e].T: each row an expert's neuron), w2
    # as is (h @ w2[e]: each expert's d outputs, which needs num_experts).
    Rule("ffn/experts/mlp/w1", "neuron", "o i"),
    Rule("ffn/experts/mlp/v1", "neuron", "o i"),
    Rule("ffn/experts/mlp/w2", "neuron", "(e i) o"),
    # Google DeepMind `gemma` (Linen) and its NNX ports (tunix): heads-first
    # einsum kernels, k/v or q/k/v fused along a leading parts axis, gate/up
    # fused likewise. Gemma 4's global layers that share keys and values
    # (k_eq_v) have a k_einsum alone, [K, D, H].
    # Flax's own NNX Gemma example (examples/gemma) names the same einsums'
    # weights `kernel` (nnx.Einsum).
    *(
        rule
        for weight in ("w", "kernel")
        for rule in (
            rule
            for name, target, layout in (
                ("q_einsum", "heads", _HEADS_IN),
                ("k_einsum", "heads", _HEADS_IN),
                ("kv_einsum", "k,v", "p n i h"),
                ("qkv_einsum", "q,k,v", "p n i h"),
                ("attn_vec_einsum", "neuron", "n h o"),
            )
            for rule in (Rule(f"{einsum}/{weight}", target, layout) for einsum in _per_expert(name))
        )
    ),
    # recurrentgemma (Griffin, Linen): the RG-LRU gates are block-diagonal,
    # [blocks, in, out] per block (each block its own operator, kept like
    # experts); the MLP's gate and up fused [2, d, F] ("...td,cdD->c...tD");
    # the local attention's proj_q [d, heads*head_dim] and its one key/value
    # head, proj_k / proj_v [d, head_dim].
    Rule("rg_lru/*/w", "neuron", "e i o"),
    Rule("mlp_block/ffw_up/w", "gate,up", "p i o"),
    Rule("attention_block/proj_q", "heads"),
    Rule("attention_block/proj_k", "heads"),
    Rule("attention_block/proj_v", "value"),
    # flaxformer's fused projections (MultiQueryDotProductAttention /
    # DenseGeneral with fused kernels): qkv_fused [in, 3, heads, head_dim],
    # kv_fused [in, 2, heads, head_dim].
    Rule("qkv_fused/kernel", "q,k,v", "i p n h"),
    Rule("kv_fused/kernel", "k,v", "i p n h"),
    # Gemma 4's shared dense MLP beside its experts, mlp2, narrows (26B-A4B:
    # F 2112 < D 2816), so its gate|up [2, F, D] is told by name, not width.
    Rule("mlp2/gating_einsum", "gate,up", "p o i"),
    # Gemma 4's experts in gemma's own MoE (26B-A4B): mlp/gating_einsum/w
    # [experts, 2, F, D] ("gecd,ekfd->kgecf"), each expert's gate and up.
    Rule("gating_einsum/w", "gate,up", "e p o i", where=EXPERTS_CHECK),
    # Gemma 3 stores gate|up as [2, F, D], Gemma 2 as [2, D, F]
    # (transpose_gating_einsum); the MLP widens (F > D), which tells them apart.
    Rule("gating_einsum", "gate,up", ("p o i", "p i o"), where="o > i"),
    # Gemma 4 (E2B/E4B): the embedder's projection into each layer's input,
    # [D, layers, per_layer_dim] ("BTD,DNP->BTNP"): one v per output (it
    # would otherwise match "*embed*", and be cut per input row).
    Rule("per_layer_model_projection/w", "neuron", "i o o"),
    # Gemma 3n's per_layer_input_projection [D, layers, per_layer_dim] the
    # same ("...td,dnp->...tnp"); the embedder's projections of soft tokens
    # (images, audio) into the text width, mm_input_projection and
    # audio_input_projection [in, D] ("...tm,md->...td"), one v per output
    # (under "embedder" they would be read as tables); HF's Gemma 3 stores
    # it as a raw parameter, mm_input_projection_weight [in, D] (x @ W).
    # Gemma 3n's AltUp: altup_unembed_projection_k [D, D] ("...F,FD->...D",
    # not a table), prediction_coefs [modalities, i, j] ("...p,pij->...ij").
    Rule("per_layer_input_projection/w", "neuron", "i o o"),
    Rule("mm_input_projection", "neuron"),
    Rule("audio_input_projection", "neuron"),
    _StoredRule("mm_input_projection_weight", "neuron", "i o"),
    Rule("altup_unembed_projection_*", "neuron"),
    Rule("altup/prediction_coefs", "neuron", ("i o", "i o o")),
    # XLNet's segment keys rel_attn/seg_embed [segments, heads, head_dim].
    Rule("rel_attn/seg_embed", "token", "o o i"),
    # keras-hub Gemma/Gemma 3 EinsumDense: heads-first "btd,ndh->btnh".
    Rule("decoder_block_*/attention/query", "heads", _HEADS_IN),
    Rule("decoder_block_*/attention/key", "heads", _HEADS_IN),
    Rule("decoder_block_*/attention/value", "value", _HEADS_IN),
    # Qwen3-Next and Qwen3.5 (their gated-DeltaNet layers' in_proj_qkvz in
    # MaxText, in_proj_z in keras-hub, tell them): the full-attention
    # query [in, heads, 2 * head_dim] holds each head's query and then its
    # output gate ("jnp.split(query, 2, axis=-1)"), a sigmoid over the
    # attention's output neurons: the query one v per head, the gate one per
    # neuron (read as a query, each head's gate would share its v).
    # HF's (and its Flax ports') flat q_proj [in, heads * 2 * head_dim]
    # interleaves them per head likewise ("view(..., -1, head_dim * 2)";
    # Qwen3-Next's DeltaNet has in_proj_qkvz, Qwen3.5's in_proj_qkv and
    # in_proj_z).
    Rule("attention/attention/query", "q,gate", "i n (p h)", beside="in_proj_qkvz"),
    Rule("self_attention/query", "q,gate", "i n (p h)", beside="linear_attn/in_proj_z"),
    Rule("self_attn/q_proj", "q,gate", "i (n p h)", beside="in_proj_qkvz"),
    Rule("self_attn/q_proj", "q,gate", "i (n p h)", beside="linear_attn/in_proj_z"),
    # jax-ml/jax-llm-examples (Llama 3 and 4, Qwen3, gpt-oss, Gemma 4, as
    # pytree dataclasses): attn.q [d, heads, head_dim] ("btd,dhq->bhtq"),
    # attn.k and attn.v [d, kv_heads, head_dim], attn.o [heads, head_dim, d].
    # More inputs than heads: a heads-first [heads, d, head_dim] fails it.
    Rule("attn/q", "heads", (_IN_HEADS, "i (n h)"), where="i > n"),
    Rule("attn/k", "heads", (_IN_HEADS, "i (n h)"), where="i > n"),
    Rule("attn/v", "value", (_IN_HEADS, "i o"), where="i > n"),
    Rule("attn/o", "neuron", ("i o", "i i o")),
    # MaxText (self_attention, Gemma 2's self_attention_local/_global),
    # keras-hub Llama/Mistral (self_attention) and flax's own attention
    # modules under their default names: [in, heads, head_dim]; T5X's and
    # flaxformer's decoder self_attention keep them flat, [in, heads*head_dim].
    *(
        Rule(f"{module}/{name}", role, (_IN_HEADS, flat))
        for module in ("self_attention*", "multiheaddotproductattention_*",
                       "selfattention_*", "multiheadattention_*")
        for name, role, flat in (("query", "heads", "i (n h)"), ("key", "heads", "i (n h)"),
                                 ("value", "value", "i o"))
    ),
    # Keras' MultiHeadAttention (keras-hub's ViT names it mha, its
    # TransformerDecoder cross_attention): [in, heads, head_dim] EinsumDense
    # kernels ("abc,cde->abde"); Haiku's of the same name keeps them flat,
    # [in, heads*head_dim].
    *(
        Rule(f"{module}/{name}", role, (_IN_HEADS, flat))
        for module in ("mha", "multi_head_attention", "multi_head_attention_*", "cross_attention",
                       # keras-hub: DINOv2's attention/attention, Moonshine's,
                       # T5Gemma2's merged_attention, VideoPrism's pooling
                       # attention, SigLIP's self_attn and its pooling
                       # head's attention.
                       "attention/attention", "moonshine_multi_head_attention*",
                       "merged_attention", "pooling_attention", "self_attn", "head/attention")
        for name, role, flat in (("query", "heads", "i (n h)"), ("key", "heads", "i (n h)"),
                                 ("value", "value", "i o"))
    ),
    # keras-hub's Gemma 4 vision tower: heads-first EinsumDense under
    # attention/{query,key,value}/dense ("bsd,qdh->bsqh").
    Rule("attention/query/dense", "heads", _HEADS_IN),
    Rule("attention/key/dense", "heads", _HEADS_IN),
    Rule("attention/value/dense", "value", _HEADS_IN),
    # keras-hub's Gemma 3n audio: the relative positions' keys, flat
    # [in, heads*head_dim] (it would otherwise match "*embed*").
    Rule("relative_position_embedding/pos_proj", "heads"),
    # keras-hub: SigLIP's attention-pooling probe [1, 1, dim] (an unnamed
    # weight of its head) and VideoPrism's pooling queries [queries, dim]:
    # one v per query, as a class token's; RWKV-7's per-head bonus r_k
    # [heads, head_dim] one per head.
    Rule("head/variable", "token", "o o i"),
    Rule("pooling_attention_query", "token", "o i"),
    Rule("rwkv_time_mix/r_k", "token", "o i"),
    # keras-hub's Bloom and Falcon: query_dense/key_dense/value_dense
    # EinsumDense kernels [in, heads, head_dim] (flat elsewhere).
    *(
        Rule(name, role, (_IN_HEADS, flat))
        for name, role, flat in (("query_dense", "heads", "i (n h)"), ("key_dense", "heads", "i (n h)"),
                                 ("value_dense", "value", "i o"))
    ),
    # keras-hub's XLNet (rel_attn): query, key, value and the positional
    # keys' encoding [in, heads, head_dim]; its output "ibnd,hnd->ibh" is
    # [out, heads, head_dim]; segment_encoding [segments, heads, head_dim]
    # one v per (segment, head).
    *(
        Rule(f"rel_attn/{name}", role, _IN_HEADS)
        for name, role in (("query", "heads"), ("key", "heads"), ("encoding", "heads"),
                           ("value", "value"))
    ),
    Rule("rel_attn/attention_output", "neuron", "o i i"),
    Rule("segment_encoding", "token", "o o i"),
    # MaxText's multi-head latent attention (DeepSeek): wq_b [q_lora_rank,
    # heads, qk_head_dim] per head; wkv_b [kv_lora_rank, heads, nope + v]
    # holds each head's key (nope) and value parts, whose sizes differ by
    # model: one v per (head, output neuron), never across heads (the
    # default reading averaged the heads together).
    Rule("wq_b", "heads", ("i n h", "i o")),
    Rule("wkv_b", "value", ("i n o", "i o")),
    # T5 (HF, bonsai's UMT5, and their PyTorch checkpoints): q, k, v, o
    # under SelfAttention / EncDecAttention, flat [d_model, heads*d_kv].
    *(
        Rule(f"{module}/{name}", role)
        for module in ("selfattention", "encdecattention")
        for name, role in (("q", "heads"), ("k", "heads"), ("v", "value"), ("o", "neuron"))
    ),
    # HF Flax GPT-2: FlaxConv1D kernels are [out, in]; c_attn is q|k|v fused
    # along the output. The size checks catch a [in, out] Dense port.
    # Its cross-attention (add_cross_attention; EasyDeL's port likewise):
    # the query q_attn, keys and values fused in c_attn (k|v runs), c_proj.
    Rule("crossattention/q_attn", "heads", "(n h) i"),
    Rule("crossattention/c_attn", "k,v", "(p n h) i", where="pnh == 2*i"),
    Rule("crossattention/c_proj", "neuron", "o i"),
    Rule("c_attn", "q,k,v", "(p n h) i", where="pnh == 3*i"),
    # GPT-Neo keeps GPT-2's MLP names on nn.Dense kernels ([in, out]); the
    # MLP widening tells the two apart.
    Rule("mlp/c_fc", "neuron", ("o i", "i o"), where="o > i"),
    Rule("mlp/c_proj", "neuron", ("o i", "i o"), where="o < i"),
    Rule("attn/c_proj", "neuron", "o i"),
    # query_key_value: HF's BLOOM, GPT-NeoX and Falcon interleave q, k and v
    # per head (their PyTorch checkpoints' weight, HF Flax BLOOM's kernel);
    # EasyDeL's GPT-NeoX and Falcon split the same Flax kernel, under the
    # same paths, into [q | k | v] runs ("jnp.split(qkv, 3, axis=-1)"; with
    # GQA, per key/value head, its query heads first). A BLOOM tree, told by
    # its word_embeddings_layernorm (only BLOOM has one), is HF's; any other
    # 2-D Flax kernel of that name raises unless a rule says which.
    # keras-hub's GPT-NeoX keeps it [in, heads, 3 * head_dim], split per head.
    Rule("query_key_value/kernel", "q,k,v", ("i (n p h)", "i n (p h)"), where="nph == 3*i",
         beside="word_embeddings_layernorm"),
    Rule("query_key_value/kernel", "q,k,v", ("i (p n h)", "i (n p h)", "i n (p h)"),
         where="nph == 3*i"),
    Rule("query_key_value", "q,k,v", "i (n p h)", where="nph == 3*i"),
    # Other fused qkv kernels, [in, q | k | v]: the parts' sizes need head
    # counts unless the model is multi-head (BlockRules(num_heads=...)).
    # MiniMax's lightning attention (HF; EasyDeL): qkv_proj reshaped
    # (heads, 3 * head_dim) and split per head, beside its output_gate.
    Rule("self_attn/qkv_proj", "q,k,v", "i (n p h)", beside="self_attn/output_gate"),
    # CodeGen's (HF PyTorch: transformer/h/N/attn/qkv_proj beside out_proj):
    # four groups of q | v | k ("qkv.reshape(..., mp_num, -1)", mp_num = 4;
    # "torch.split(qkv_split, local_dim, dim=-1)" gives query, value, key).
    Rule("h/*/attn/qkv_proj/weight", ",".join(("q", "v", "k") * 4), "i (p n h)",
         where="pnh == 3*i", beside="attn/out_proj"),
    # MaxText's fused_qkv: [emb, q + 2 kv heads, head_dim], the heads axis
    # split into [q | k | v] runs ("jnp.split(qkv_proj, [q, q + kv], axis=2)");
    # its GPT-3's [emb, 3, heads, head_dim].
    Rule("qkv_proj", "q,k,v", ("i (p n h)", "i (p n) h", "i p n h")),
    Rule("qkv", "q,k,v", "i (p n h)"),
    # wqkv: InternLM2's (attention/wqkv, in PyTorch checkpoints and EasyDeL)
    # repeats (q, k, v) per key/value head, its query heads first; MPT's
    # (attn/Wqkv) and Phi's (mixer/Wqkv) are [q | k | v] runs. Elsewhere the
    # name could be either, so the shape must settle it or it raises.
    Rule("attention/wqkv", "q,k,v", "i (n p h)"),
    *(Rule(f"{module}/wqkv", "q,k,v", "i (p n h)") for module in ("attn", "mixer")),
    Rule("wqkv", "q,k,v", ("i (p n h)", "i (n p h)")),
    # keras-hub's Swin: multi-head, q|k|v of the model's width each.
    Rule("attention_qkv", "q,k,v", "i (p n h)", where="pnh == 3*i"),
    Rule("gate_up_proj", "gate,up", "i (p o)"),
    # PyTorch nn.MultiheadAttention: q|k|v along the output of in_proj_weight
    # [3*embed, embed], i.e. a transposed [in, q | k | v] (WEIGHT_NAMES).
    Rule("in_proj_weight", "q,k,v", "i (p n h)", where="pnh == 3*i"),
    # One v per head. Flat [in, heads*head_dim] kernels need head_dim.
    # query_proj/key_proj: Equinox's MultiheadAttention; q_lin/k_lin: DistilBERT.
    # keras-hub's RoFormerV2 and ESM (q_dense_layer), T5 (query_projector),
    # RWKV-7 (receptance, its query): flat [in, heads*head_dim].
    *_rules("heads", "q_dense_layer", "k_dense_layer", "query_projector", "key_projector",
            "receptance"),
    *_rules("heads", "q_proj", "k_proj", "wq", "wk", "query", "key", "query_proj", "key_proj",
            "q_lin", "k_lin"),
    # keras-hub's untied output projection is [d_model, vocab]: one v per
    # token, i.e. per output (it would otherwise match "*embed*").
    Rule("reverse_embeddings", "neuron", "i o"),
    # AlphaFold 2's attention (Haiku, monomer and multimer): query_w, key_w
    # [in, heads, key_dim], value_w and gating_w [in, heads, value_dim],
    # output_w [heads, value_dim, out]; the global column attention's single
    # key and value heads [in, key_dim]; the multimer's invariant point
    # attention projections [in, heads, dim] (its outer_product_mean/output_w
    # [c, c, out] is any 3-D kernel's default: per output).
    Rule("msa_column_global_attention/attention/key_w", "heads", "i h"),
    Rule("msa_column_global_attention/attention/value_w", "neuron", "i o"),
    *(Rule(name, "heads", _IN_HEADS) for name in (
        "attention/query_w", "attention/key_w", "q_scalar_projection/weights",
        "k_scalar_projection/weights", "q_point_projection/point_projection/weights",
        "k_point_projection/point_projection/weights")),
    *(Rule(name, "value", _IN_HEADS) for name in (
        "attention/value_w", "attention/gating_w", "v_scalar_projection/weights",
        "v_point_projection/point_projection/weights")),
    # (Each of its rank only: a layer axis nobody declared raises.)
    *(Rule(name, "neuron", "i i o") for name in ("attention/output_w", "outer_product_mean/output_w")),
    # AlphaFold 3: its grid attention's query and key, Linears with
    # transpose_weights, [heads, head_dim, in]; the diffusion transformer's
    # q/k/v [in, heads, head_dim]; per-head logit biases and the confidence
    # head's per-atom logits [in, a, b] (per output).
    Rule("pair_attention*/q_projection/weights", "heads", "n h i"),
    Rule("pair_attention*/k_projection/weights", "heads", "n h i"),
    Rule("*q_projection/weights", "heads", _IN_HEADS),
    Rule("*k_projection/weights", "heads", _IN_HEADS),
    *(Rule(f"{name}/weights", "value", _IN_HEADS) for name in (
        "*v_projection", "pair_logits_projection", "experimentally_resolved_logits", "plddt_logits")),
    # AlphaFold 3's pair attention gate, a Linear with transpose_weights:
    # pair_attention*/gating_query/weights [out, in] (square, so no shape
    # tells; its MSA attention's gating_query is [in, out]).
    Rule("pair_attention*/gating_query/weights", "neuron", "o i"),
    # Haiku's hk.nets.VectorQuantizer codebook, embeddings [dim, codes]
    # (distances to each column): one v per code vector.
    Rule("vector_quantizer/embeddings", "token", "i o"),
    # Learned position tables of other layouts: EasyDeL's Kimi-VL MoonViT
    # patch_embed/pos_emb/kernel [dim, width, height] (a grid of positions,
    # interpolated), Levanter's Hyena filter pos_emb/z [features, positions]
    # (per layer when its stack is not declared): one v per position.
    Rule("pos_emb/kernel", "token", "i o o"),
    Rule("pos_emb/z", "token", ("i o", "o i o")),
    # A Flax `kernel` (Haiku's `w`, AlphaFold's `weights`) under an
    # embedding-named module is a Dense or Conv kernel ([..., in, out]: ViT's
    # patch_embeddings/projection [kh, kw, c, d], GPT-NeoX's embed_out [d,
    # vocab], AlphaFold's template_single_embedding/weights), not a [vocab,
    # dim] table: one v per output, as the official per-row rule gives its
    # [out, ...] weight.
    # (Haiku's and AlphaFold's as the leaf itself: Reformer's axial
    # position_embeddings/weights/0 is a list of tables.)
    *(
        (Rule if leaf == "kernel" else _KernelLeafRule)(f"{name}{'/*' * depth}/{leaf}", "neuron")
        for name in ("*embed*", "*embd*") for depth in range(3) for leaf in ("kernel", "w", "weights")
    ),
    # A PyTorch convolution under an embedding-named module (CLIP's,
    # SigLIP's, Idefics3's patch_embedding/weight [d, 3, p, p], ViT's and
    # DINOv2's patch_embeddings/projection/weight, Qwen2-VL's
    # patch_embed/proj/weight [d, 3, t, p, p]) is no table: one v per output
    # channel, as the official per-row rule gives it.
    *(_TorchConvRule(f"{name}{'/*' * depth}/weight", "neuron", ("o i i", "o i i i", "o i i i i"))
      for name in ("*embed*", "*embd*") for depth in range(3)),
    # HF's weight-normed positional convolution (wav2vec2, HuBERT:
    # pos_conv_embed/conv/weight_v [out, in / groups, k], as PyTorch stores
    # it): one v per output channel (under "*embed*" it is no table).
    _StoredRule("pos_conv_embed/conv/weight_v", "neuron", "o i i"),
    # Its gain, weight_g [1, 1, k]: one v, as the official per-row rule
    # gives its one row (and as a norm's scale).
    Rule("pos_conv_embed/conv/weight_g", "tensor"),
    # Gemma 4's (gemma, tunix) per-layer input table [vocab, layers, dim]:
    # one v per token.
    Rule("embedder/per_layer_input_embedding", "token", "o i i"),
    # Diffusion transformers' adaptive-norm tables (PixArt, LTX-Video, WAN):
    # scale_shift_table [rows, d] ([1, rows, d]), each row a shift, scale or
    # gate: one v per row, as a table's.
    Rule("*scale_shift_table", "token"),
    # A MAP head's learned queries (big_vision's, scenic's, Octo's map_head
    # and TokenLearner's MAPHead_0): probe [1, queries, dim], one v per
    # query, as a table's row (a single query [1, 1, dim] gets one).
    Rule("probe", "token", POSITION_TABLE_LAYOUTS),
    # Other arrays of learned vectors, [n, dim] (or [1, n, dim]), by the
    # parameter's own name (a module of that name holds kernels): soft
    # prompts (google-research/prompt-tuning's prompt/prompt [length,
    # embed]), Perceiver-style latents and learned queries, memory, register
    # and tape tokens (scenic's AdaTape tape_tokens [bank, dim]), a
    # codebook, MBT's bottleneck tokens: one v per learned vector, as the
    # official per-row reading of such a PyTorch parameter gives.
    *(_LeafRule(name, "token", POSITION_TABLE_LAYOUTS) for name in LEARNED_VECTORS),
    # Attention sinks, one learned logit per head: sinks [heads] (HF's and
    # EasyDeL's GPT-OSS) or [kv_heads, q_per_group] (Levanter's): one v per
    # tensor, as any one-axis parameter gets.
    _LeafRule("sinks", "tensor"),
    # Learned position tables: one v per position, whatever leads it (ViT's
    # [1, positions, dim], a 2-D grid's [1, height, width, dim]).
    *(Rule(name, "token", POSITION_TABLE_LAYOUTS) for name in POSITION_TABLES),
    # One v per token: embedding tables are [vocab, dim]. Official: any name
    # containing "embed", "embd" or "wte"; token_emb is AXLearn's (and
    # x-transformers') table, tok_emb nanoGPT ports'.
    *_rules("token", "*embed*", "*embd*", "wte", "wpe", "token_emb", "tok_emb", near=True),
    *(_LeafRule(name, "token", POSITION_TABLE_LAYOUTS) for name in PORTED_TOKEN_TABLES),
    # Codebooks are tables too: wav2vec2's quantizer codevectors [1, groups *
    # entries, dim / groups], one v per code vector.
    Rule("codevectors", "token", POSITION_TABLE_LAYOUTS),
    # Values: one v per output neuron, i.e. only the input axis is averaged
    # ([in, heads, head_dim] -> [heads, head_dim]).
    *_rules("value", "v_proj", "wv", "value", "value_proj", "v_lin"),
    # Per output neuron: lm_head [dim, vocab] keeps vocab (one v per token, as
    # in the official "output" rule); attention out [heads, head_dim, out] and
    # MLP kernels keep out. Listed so explain() names them; the fallback for
    # unnamed kernels does the same.
    # Mamba's A_log [d_inner, d_state]: each channel's decay rates, one v
    # per channel (Mamba-2's and gated DeltaNet's [heads] one per tensor).
    Rule("a_log", "neuron", "o i"),
    *_rules("neuron", "lm_head", "output", "final_layer", "logits_dense"),
    *_rules("neuron", "o_proj", "out", "c_proj", "output_proj", "out_proj", "out_lin",
            "attention_output", "attn_out_proj"),
    # A 3-D MLP kernel is a mixture of experts' ([E, in, out]: tunix's
    # Qwen3-MoE mlp/gate_proj, MaxText's GPT-OSS GptOssMlp/wo), each expert's
    # neurons their own blocks. An attention output is [heads, head_dim, out]
    # under other names (out, o_proj), never wo: read as [in, in, out], a 3-D
    # wo would average its experts together.
    *(
        Rule(name, "neuron", MLP_LAYOUTS, where=EXPERTS_CHECK)
        for name in ("mlp", "feed_forward", "gate_proj", "up_proj", "down_proj",
                     "w1", "w2", "w3", "wi", "wi_0", "wi_1", "wo", "fc1", "fc2", "c_fc",
                     # jax-llm-examples' experts: we_gate, we_up [E, d, ffn],
                     # we_down [E, ffn, d], gpt-oss's we_gate_up [E, d, 2 ffn].
                     "we_gate", "we_up", "we_down", "we_gate_up",
                     # DeepMind's simply: ffn_0, ffn_0_gate [E, d, ffn], ffn_1 [E, ffn, d].
                     "ffn_0", "ffn_0_gate", "ffn_1")
    ),
)


@dataclasses.dataclass(frozen=True)
class BlockRules:
  """Overrides for the default partition; pass as ``blocks=``.

  Being a plain (non-callable) object, it passes through
  ``optax.inject_hyperparams`` untouched.

  Attributes:
    rules: rules tried before :data:`DEFAULT_RULES`, in order; each a
      :class:`Rule` or a ``(pattern, target)`` pair. When several rules match
      a leaf, the first one wins (a later, overlapping rule is never
      consulted for it). A rule claims a bias (:data:`BIAS_PATTERNS`) only
      if its pattern names it (``"attn/*/bias"``): ``"attention/key"`` is
      for the module's kernel, its bias stays plain Adam. A rule that claims
      no leaf at all (a typo, or a rule shadowed by earlier ones) draws one
      ``UserWarning`` naming it when the optimizer state is initialised.
    stacked: ``{pattern: axis}``: leaves whose path matches ``pattern`` carry
      layer-stack axes (``nnx.scan``/``nnx.vmap``: ``0``; MaxText: ``1``); an
      int or a tuple of ints; the first matching pattern wins, so put the
      more specific ones first. Rules then apply per layer, the stack axes are
      never averaged, and the default weight-decay mask does not count them.
    value_as_one_block: treat each value projection as one block (per layer),
      as the official README advises for runs shorter than ~10k steps
      (paper, Appendix C.3).
    query_key_per_neuron: give query and key kernels (every rule whose
      target is ``"heads"``, and the ``q``/``k`` parts of fused kernels) one
      ``v`` per output neuron, as values get, instead of one per head. Not
      the official partition: on the example's models it recovered most of
      the loss Adam-mini trails AdamW by at AdamW's learning rate, for a
      negligible share of extra state (``heads * head_dim`` values per
      kernel instead of ``heads``; see the README's "Choosing the learning
      rate"). Off by default.
    use_defaults: also try :data:`DEFAULT_RULES` after ``rules``.
    num_heads: the model's number of query heads, and
    num_kv_heads: of key/value heads (``None``: as ``num_heads``). Needed
      only where shapes and ``head_dim`` cannot settle a layout: a 3-D
      attention kernel under a name no rule knows the layout of (heads-first
      ``[heads, in, head_dim]`` or ``[in, heads, head_dim]``?) and with no
      output kernel beside it to say (:data:`ATTENTION_OUTPUTS`), or a fused
      ``[in, q | k | v]`` kernel whose parts differ in size (GQA). Given,
      they are also checked against every heads axis.
    num_experts: the number of experts of a mixture whose kernels fold
      them into one axis with another (DBRX's ``w2 [experts * ffn, d]``,
      layout ``"(e i) o"``); given, it is also checked against every experts
      axis.
    weight_layout: how parameters named ``weight`` (:data:`WEIGHT_NAMES`)
      with two or more (non-layer) axes are laid out, where their blocks
      depend on it. ``"torch"``: as PyTorch stores them, the transpose of the
      Flax kernel the rules describe (``nn.Linear``'s ``[out, in]``, GPT-2's
      ``Conv1D`` ``[in, out]``, convolutions ``[out, in, kh, kw]``): a
      PyTorch checkpoint read with ``safetensors.flax.load_file``, an
      Equinox model, a port of PyTorch code. ``"flax"``: as a Flax
      ``kernel`` (``[in, out]``). ``None`` (default): the shape must settle
      it (a fused ``c_attn`` of ``[768, 2304]`` fits only one reading);
      where both readings fit and give different blocks, a ``ValueError``
      asks for it. Embedding tables and norm weights read the same either way.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_mini
    >>> params = {"layers": {"attn": {"wv": {"kernel": jnp.zeros((4, 16, 16))}}}}
    >>> rules = optax_mini.BlockRules(stacked={"layers": 0}, value_as_one_block=True)
    >>> spec = optax_mini.block_specs(params, blocks=rules)["layers"]["attn"]["wv"]["kernel"]
    >>> spec.v_shape((4, 16, 16))  # one v per layer
    (4,)

    One ``v`` per output neuron of the query kernel (4 heads of 8), not per head:

    >>> params = {"attn": {"q_proj": {"kernel": jnp.zeros((16, 32))}}}
    >>> rules = optax_mini.BlockRules(query_key_per_neuron=True)
    >>> spec = optax_mini.block_specs(params, head_dim=8, blocks=rules)["attn"]["q_proj"]["kernel"]
    >>> spec.v_shape((16, 32)), spec.role
    ((32,), 'heads per neuron [q_proj]')

    A PyTorch checkpoint (``safetensors.flax.load_file``): flat dotted names,
    ``nn.Linear`` weights ``[out, in]``:

    >>> params = {"model.layers.0.self_attn.k_proj.weight": jnp.zeros((32, 64)),
    ...           "lm_head.weight": jnp.zeros((100, 64))}
    >>> specs = optax_mini.block_specs(
    ...     params, head_dim=8, blocks=optax_mini.BlockRules(weight_layout="torch"))
    >>> specs["model.layers.0.self_attn.k_proj.weight"].v_shape((32, 64))  # 4 kv heads
    (4,)
    >>> specs["lm_head.weight"].v_shape((100, 64))  # one v per token
    (100,)
  """

  rules: tuple[Rule, ...] = ()
  stacked: tuple[tuple[str, tuple[int, ...]], ...] = ()
  value_as_one_block: bool = False
  use_defaults: bool = True
  query_key_per_neuron: bool = False
  num_heads: int | None = None
  num_kv_heads: int | None = None
  num_experts: int | None = None
  weight_layout: str | None = None

  def __post_init__(self):
    rules = tuple(
        r if isinstance(r, Rule) else Rule(*r) for r in _as_items(self.rules)
    )
    for rule in rules:
      _check_rule(rule)
    for name in ("num_heads", "num_kv_heads", "num_experts"):
      value = getattr(self, name)
      if value is not None and (
          isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0
      ):
        raise ValueError(f"BlockRules: {name} must be a positive int or None, got {value!r}.")
    if self.weight_layout not in WEIGHT_LAYOUTS:
      raise ValueError(
          f"BlockRules: weight_layout must be one of {WEIGHT_LAYOUTS}, got "
          f"{self.weight_layout!r}: 'torch' for PyTorch's layout ([out, in], the "
          "transpose of a Flax kernel), 'flax' for a Flax kernel's ([in, out])."
      )
    stacked = tuple((str(p), _int_tuple(a)) for p, a in _as_items(self.stacked))
    object.__setattr__(self, "rules", rules)
    object.__setattr__(self, "stacked", stacked)

  def all_rules(self) -> tuple[Rule, ...]:
    """The user rules followed (unless disabled) by the defaults."""
    return self.rules + (DEFAULT_RULES if self.use_defaults else ())


def _rule_name(rule: Rule) -> str:
  """How ``explain`` names a rule: its pattern, and its signature if any."""
  if isinstance(rule, _ModelRule):
    return rule.source
  return rule.pattern if rule.beside is None else f"{rule.pattern}, beside {rule.beside}"


def _check_rule(rule: Rule) -> None:
  if not isinstance(rule.pattern, str) or not rule.pattern.strip("/"):
    raise ValueError(f"BlockRules: rule pattern must be a non-empty str, got {rule.pattern!r}.")
  target = rule.target
  if isinstance(target, BlockSpec):
    return
  if not isinstance(target, str) or (
      target not in ROLES and not all(p in PART_ROLES for p in target.split(","))
  ):
    raise ValueError(
        f"BlockRules: rule {rule.pattern!r} has target {target!r}; expected a "
        f"BlockSpec, one of {ROLES}, or fused parts from {tuple(PART_ROLES)} "
        "joined by commas (e.g. 'q,k,v')."
    )
  layouts = _layout_candidates(rule.layout)
  for layout in layouts:
    groups = _parse_layout(layout)
    if ("p" in "".join(groups)) != ("," in target):
      raise ValueError(
          f"BlockRules: rule {rule.pattern!r}: a fused target ({target!r}) needs a "
          f"layout with a 'p' (parts) axis and only it does; got layout {layout!r}."
      )
  if "," in target and not layouts:
    raise ValueError(
        f"BlockRules: rule {rule.pattern!r}: fused target {target!r} needs a layout "
        "saying which axis holds the parts, e.g. layout='i (p n h)'."
    )
  if rule.where is not None:
    _parse_where(rule.where)
  if rule.beside is not None and (not isinstance(rule.beside, str) or not rule.beside.strip("/")):
    raise ValueError(
        f"BlockRules: rule {rule.pattern!r}: beside must be a non-empty path pattern "
        f"(str) or None, got {rule.beside!r}."
    )


def _as_items(x: Any) -> Iterable[Any]:
  if isinstance(x, Mapping):
    return tuple(x.items())
  return tuple(x)


Blocks = Union[None, BlockRules, Sequence[Any], Any]


# ----------------------------------------------------------------------------
# Paths


def normalize_path(path: Sequence[Any]) -> tuple[str, ...]:
  """Turns a ``jax.tree_util`` key path into lower-cased string components.

  ``DictKey`` (str or int keys), ``GetAttrKey``, ``SequenceKey`` and
  ``FlattenedIndexKey`` all become plain strings; a string key holding
  ``/``- or ``.``-separated names (a flat dict of keras variable paths, or of
  PyTorch parameter names as ``safetensors.flax.load_file`` returns a
  checkpoint) becomes its components. A trailing ``.value``
  attribute is dropped: flax ``nnx.Optimizer`` hands ``init`` an ``nnx.State``
  whose paths end in it, and ``update`` plain arrays whose paths do not, so
  both must see the same components.

  Example:
    >>> import jax
    >>> from optax_mini import normalize_path
    >>> path = (jax.tree_util.DictKey("Layers"), jax.tree_util.SequenceKey(3),
    ...         jax.tree_util.GetAttrKey("value"))
    >>> normalize_path(path)
    ('layers', '3')
    >>> normalize_path((jax.tree_util.DictKey("model.layers.0.self_attn.q_proj.weight"),))
    ('model', 'layers', '0', 'self_attn', 'q_proj', 'weight')
  """
  keys = list(path)
  if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name == "value":
    keys.pop()
  out = []
  for key in keys:
    if isinstance(key, jax.tree_util.DictKey):
      # A flat dict keyed by variable paths (keras: "decoder_block_0/attention/
      # query/kernel"; a PyTorch checkpoint read with safetensors:
      # "model.layers.0.self_attn.q_proj.weight") reads as the nested tree
      # those paths describe.
      out.extend(c for c in str(key.key).replace(".", "/").split("/") if c)
    elif isinstance(key, jax.tree_util.GetAttrKey):
      out.append(key.name)
    elif isinstance(key, jax.tree_util.SequenceKey):
      out.append(str(key.idx))
    elif isinstance(key, jax.tree_util.FlattenedIndexKey):
      out.append(str(key.key))
    else:
      out.append(str(key))
  return tuple(c.lower() for c in out)


def path_str(path: Sequence[Any]) -> str:
  """``jax.tree_util.keystr`` of a key path (for messages)."""
  return jax.tree_util.keystr(tuple(path)) or "<root>"


# ----------------------------------------------------------------------------
# Roles -> specs


# ----------------------------------------------------------------------------
# Layouts: what each axis of a kernel is, and so which axes a role averages

#: What each role keeps, by layout letter; every other letter is averaged.
#: Experts (``e``) are kept by every role: each expert's kernel is a layer of
#: its own, as a layer stack's are.
#: ``output`` is the role of a fused kernel's gate and up parts: one v per
#: output neuron, as ``neuron``, where every output axis is the part's (an
#: MLP's gate|up ``o``; a gated query's per-head gate, ``n`` and ``h``),
#: and unlike ``value``, whatever ``BlockRules.value_as_one_block`` says.
_KEEPS = {
    "element": frozenset("ionhpe"),
    "heads": frozenset("npe"),
    "value": frozenset("onhpe"),
    "output": frozenset("onhpe"),
    "neuron": frozenset("ope"),
    "token": frozenset("ope"),
    "tensor": frozenset("pe"),
}
_LETTERS = {"i": "input", "o": "output", "n": "heads", "h": "head_dim", "p": "parts", "e": "experts"}


class _Misfit(Exception):
  """A layout candidate does not fit a leaf (the message says why)."""


@functools.lru_cache(maxsize=512)
def _parse_layout(text: str) -> tuple[str, ...]:
  """``"i (n h)"`` -> ``("i", "nh")``: one group of letters per axis."""
  groups, i, text = [], 0, str(text).lower()
  while i < len(text):
    char = text[i]
    if char.isspace():
      i += 1
      continue
    if char == "(":
      end = text.find(")", i)
      if end < 0:
        raise ValueError(f"layout {text!r}: unclosed '('.")
      group, i = "".join(text[i + 1 : end].split()), end + 1
    else:
      group, i = char, i + 1
    if not group or set(group) - set(_LETTERS) or len(set(group)) != len(group):
      raise ValueError(
          f"layout {text!r}: axis {group!r} must use each of the letters "
          f"{''.join(_LETTERS)} at most once ({_LETTERS})."
      )
    groups.append(group)
  if "".join(groups).count("p") > 1:
    raise ValueError(f"layout {text!r}: only one axis can hold the parts ('p').")
  return tuple(groups)


def _layout_candidates(layout: Any) -> tuple[str, ...]:
  if layout is None:
    return ()
  return (layout,) if isinstance(layout, str) else tuple(layout)


def _spatial_axes(shape: tuple[int, ...]) -> str | None:
  """Where a 4-D convolution kernel's two spatial axes are, if its shape
  says: ``"first"`` (Flax, ``[kh, kw, in, out]``), ``"last"`` (PyTorch,
  ``[out, in, kh, kw]``), or ``None``. The spatial pair is equal, and both
  channel axes are at least twice as long and of 8 or more (a 3-to-3
  channel ``[3, 3, 7, 7]`` could be either)."""
  def spatial(pair, channels):
    return pair[0] == pair[1] and min(channels) >= max(8, 2 * pair[0])

  first, last = spatial(shape[:2], shape[2:]), spatial(shape[2:], shape[:2])
  return "first" if first and not last else "last" if last and not first else None


def _conv_orientation_settles(fits, transposed, shape, rules, where, weight, own, target):
  """The readings of a 4-D ``weight`` that put its kernel's spatial axes
  where its shape has them. Undeclared, the shape settles the orientation
  (``[3, 3, 512, 512]`` is a Flax kernel, ``[512, 512, 3, 3]`` PyTorch's);
  declared against the shape (flaxmodels' StyleGAN2 names its Flax
  ``[kh, kw, in, out]`` kernels ``weight``), it raises: read as declared,
  its v would be kept along a spatial axis, the output channels averaged."""
  spatial = _spatial_axes(shape)
  if spatial is None:
    return fits
  agreeing = {x: fit for x, fit in fits.items() if (x in transposed) == (spatial == "last")}
  if agreeing or rules.weight_layout is None:
    return agreeing or fits
  stored, declared = ("Flax", "torch") if spatial == "first" else ("PyTorch", "flax")
  layout = "i i i o" if spatial == "first" else "o i i i"
  raise ValueError(
      f"{where}: shape {shape}, a parameter named {weight!r} read with "
      f"weight_layout={declared!r}, has its two equal, small (spatial) axes where a {stored} "
      f"convolution keeps them ({'[kh, kw, in, out]' if spatial == 'first' else '[out, in, kh, kw]'}): "
      "read as declared, its v would be kept along a spatial axis, its output channels averaged. "
      f"If its library stores it so, give this leaf a rule as stored: blocks=optax_mini."
      f"BlockRules(rules=[Rule({own!r}, {target!r}, layout={layout!r})], weight_layout={declared!r})."
  )


def _default_layouts(role: str, shape: tuple[int, ...]) -> tuple[str, ...]:
  """The usual layouts of a role's kernels of ``shape`` (Flax: ``[in, out]``).

  A table's rows are its first axis, but for leading axes of size one: a
  ``[1, positions, dim]`` table (ViT's, broadcast over the batch) keeps them
  and has one row per position, a ``[1, 1, dim]`` class token one row."""
  nd = len(shape)
  if role == "token":
    ones = next((a for a, size in enumerate(shape[: nd - 2]) if size != 1), max(nd - 2, 0))
    if ones < nd - 2:
      # [a, b, ..., dim] with a > 1: the rows are the vocabulary, by far the
      # largest axis (Gemma 4's per-layer table [vocab, layers, dim] first,
      # xlstm-jax's tensor-parallel [shards, vocab, dim / shards] second);
      # without one that large, no reading is sure.
      sizes = sorted(shape[: nd - 1], reverse=True)
      if sizes[0] < 4 * sizes[1]:
        return ()
      rows = shape[: nd - 1].index(sizes[0])
      return ("".join("o" if a == rows else "i" for a in range(nd)),)
    return ("o" * (ones + 1) + "i" * (nd - 1 - ones),)
  if role in ("heads", "value") and nd == 3:
    return (_IN_HEADS, _HEADS_IN)
  # A 4-D query/key/value kernel is read only as a 1x1 convolution's [1, 1,
  # in, out]: any other (AXLearn's [layers, model, heads, head_dim] in an
  # undeclared stack) would have its leading axes averaged, so it raises.
  one_by_one = nd == 4 and shape[0] == shape[1] == 1
  if role == "heads":  # flat, or a 1x1 convolution's [1, 1, in, heads*head_dim]
    return ("i (n h)",) if nd == 2 else ("i i i (n h)",) if one_by_one else ()
  if role == "value":  # a 1x1 convolution's [1, 1, in, out]: one v per output
    if nd == 4:
      return ("i i i o",) if one_by_one else ()
    return ("i" + "o" * (nd - 1),)
  if role == "neuron":
    return ("i" * (nd - 1) + "o",)
  return (("i" if role == "tensor" else "o") * nd,)


_WHERE_OPS = {
    "==": lambda a, b: a == b, "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b, ">": lambda a, b: a > b,
}


@functools.lru_cache(maxsize=128)
def _parse_where(text: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
  for op in _WHERE_OPS:  # two-character operators first
    if op in text:
      left, right = text.split(op, 1)
      terms = []
      for side in (left, right):
        factors = tuple(f.strip().lower() for f in side.split("*"))
        if not factors or any(
            not f or not (f.isdigit() or set(f) <= set(_LETTERS)) for f in factors
        ):
          raise ValueError(f"where={text!r}: terms are products of ints and layout letters.")
        terms.append(factors)
      return op, terms[0], terms[1]
  raise ValueError(f"where={text!r}: expected a comparison ({' '.join(_WHERE_OPS)}).")


def _where_holds(text: str, sizes: Mapping[str, int]) -> bool:
  """Whether the sizes pass the check; a check naming a letter the layout
  lacks does not apply to it (a rule's ``[in, out]`` candidate beside its
  ``[experts, in, out]`` one)."""
  op, left, right = _parse_where(text)
  named = {c for factor in left + right if not factor.isdigit() for c in factor}
  if not named <= set(sizes):
    return True

  def value(factors):
    out = 1
    for factor in factors:
      out *= int(factor) if factor.isdigit() else math.prod(sizes.get(c, 1) for c in factor)
    return out

  return _WHERE_OPS[op](value(left), value(right))


class _Resolved(NamedTuple):
  reduce_axes: tuple[int, ...]
  head_axis: int | None = None
  head_dim: int | None = None
  part_axis: int | None = None
  parts: tuple[Part, ...] = ()


def _fit(
    groups: tuple[str, ...],
    shape: tuple[int, ...],
    target: str,
    head_dim: int | None,
    rules: BlockRules,
    where: str | None,
) -> _Resolved:
  """The blocks ``target`` gives a leaf of ``shape`` read as ``groups``."""
  if len(groups) != len(shape):
    raise _Misfit(f"the layout has {len(groups)} axes, the leaf {len(shape)}")
  names = target.split(",") if "," in target else None
  roles = tuple(_part_role(n, rules) for n in names) if names else (target,)
  counts = {c for c in (rules.num_heads, rules.num_kv_heads) if c is not None}
  sizes: list[dict[str, int]] = []
  for group, extent in zip(groups, shape):
    known: dict[str, int] = {}
    if "p" in group:
      known["p"] = len(roles)
    if "e" in group and len(group) > 1:  # experts folded into one axis
      if rules.num_experts is None:
        raise _Misfit("its experts share an axis with another factor: it needs "
                      "BlockRules(num_experts=...)")
      known["e"] = rules.num_experts
    if "h" in group and head_dim is not None:
      known["h"] = head_dim
    elif "h" in group and len(set(group) - set(known)) > 1:
      # A flat heads * head_dim axis; a part's head ("(p h)": the parts
      # are counted) is the axis's size over theirs.
      raise _Misfit("needs head_dim")
    unknown = [c for c in group if c not in known]
    if len(unknown) > 1:
      raise _Misfit(f"axis ({group}) has {len(unknown)} unknown factors")
    factor = math.prod(known.values())
    if unknown:
      # [q | k | v] runs with head counts given: the parts' sizes come from
      # them (_fit_parts), not from equal thirds.
      uneven = "p" in group and unknown == ["n"]
      if extent % factor and uneven and rules.num_heads is None:
        raise _Misfit(
            "the sizes of its q and k/v parts are unknown (they differ under "
            "grouped-query attention)"
        )
      if extent % factor and not uneven:
        raise _Misfit(f"its axis of size {extent} is no multiple of {factor} ({group})")
      known[unknown[0]] = extent // factor
    elif factor != extent:
      raise _Misfit(f"axis ({group}) has size {extent}, expected {factor}")
    sizes.append(known)
  letter_sizes: dict[str, int] = {}
  for known in sizes:
    for c, size in known.items():
      letter_sizes[c] = letter_sizes.get(c, 1) * size
  if where is not None and not _where_holds(where, letter_sizes):
    raise _Misfit(f"its sizes fail {where!r} ({_sizes_text(letter_sizes)})")
  if rules.num_experts is not None and letter_sizes.get("e", rules.num_experts) != rules.num_experts:
    raise _Misfit(f"its experts axis has {letter_sizes['e']} experts, not num_experts={rules.num_experts}")
  if names is None:
    if counts and "n" in letter_sizes and letter_sizes["n"] not in counts:
      raise _Misfit(
          f"its heads axis has {letter_sizes['n']} heads, not num_heads/num_kv_heads "
          f"{sorted(counts)}"
      )
    return _fit_role(groups, sizes, roles[0])
  return _fit_parts(groups, sizes, shape, names, roles, rules, where)


def _role(target: str, rules: BlockRules) -> str:
  """The role a rule's ``target`` (or a fused kernel's part role) takes under
  the switches of ``rules``."""
  if target == "value" and rules.value_as_one_block:
    return "tensor"
  if target == "heads" and rules.query_key_per_neuron:
    return "value"  # one v per output neuron: only the input axis averaged
  return target


def _part_role(name: str, rules: BlockRules) -> str:
  return _role(PART_ROLES[name], rules)


def _sizes_text(sizes: Mapping[str, int]) -> str:
  return ", ".join(f"{c}={sizes[c]}" for c in _LETTERS if c in sizes)


def _fit_role(groups, sizes, role) -> _Resolved:
  keeps = _KEEPS[role]
  reduce, head_axis, head_dim = [], None, None
  for axis, group in enumerate(groups):
    kept = [c in keeps for c in group]
    if all(kept):
      continue
    if not any(kept):
      reduce.append(axis)
    elif len(group) == 2 and kept == [True, False] and head_axis is None:
      # The outer factor kept, the inner averaged: heads of head_dim ("nh"),
      # experts of their neurons ("ei").
      head_axis, head_dim = axis, sizes[axis][group[1]]
    else:
      raise _Misfit(f"a {role!r} role cannot cut axis ({group})")
  return _Resolved(tuple(reduce), head_axis, head_dim)


def _fit_parts(groups, sizes, shape, names, roles, rules, where) -> _Resolved:
  part_axis = next(a for a, g in enumerate(groups) if "p" in g)
  group = groups[part_axis]
  outer, inner = group.split("p")
  inner_sizes = [sizes[part_axis][c] for c in inner]
  part_sizes = [math.prod(inner_sizes)] * len(names)
  if not outer and "n" in inner:
    # [q | k | v] runs: with GQA their sizes differ, so equal thirds are
    # right only when head counts or the rule's size check confirm them
    # (a query beside its own gate, q|gate, has equal parts).
    heads = {"q": rules.num_heads}
    kv = rules.num_kv_heads if rules.num_kv_heads is not None else rules.num_heads
    heads.update(k=kv, v=kv)
    if rules.num_heads is not None:
      # A part named more than once (CodeGen's four groups of q | v | k)
      # holds its share of the heads.
      other = math.prod(sizes[part_axis][c] for c in inner if c != "n")
      share = {n: heads.get(n, rules.num_heads) / names.count(n) for n in names}
      if any(s != int(s) for s in share.values()):
        raise _Misfit(f"its {len(names)} parts cannot share num_heads={rules.num_heads} evenly")
      part_sizes = [int(share[n]) * other for n in names]
      if sum(part_sizes) != shape[part_axis]:
        raise _Misfit(
            f"parts {dict(zip(names, part_sizes))} (from num_heads={rules.num_heads}, "
            f"num_kv_heads={kv}) do not add up to its axis of size {shape[part_axis]}"
        )
    elif "q" in names and {"k", "v"} & set(names) and where is None:
      raise _Misfit(
          "the sizes of its q and k/v parts are unknown (they differ under "
          "grouped-query attention)"
      )
  outer_counts = [sizes[part_axis][c] for c in outer if c == "n"]
  counts = {c for c in (rules.num_heads, rules.num_kv_heads) if c is not None}
  grouped = None  # query heads per key/value head, if they interleave so
  if outer == "n" and inner == "h" and "q" in names and {"k", "v"} & set(names):
    # (q, k, v) repeated per head: under grouped-query attention per
    # key/value head, its query heads first (InternLM2's wqkv,
    # "(h gs d)" with gs = 2 + query heads per group).
    kv = rules.num_kv_heads if rules.num_kv_heads is not None else rules.num_heads
    if rules.num_heads is None and where is None:
      raise _Misfit(
          "the sizes of its q and k/v parts are unknown (under grouped-query attention "
          "each key/value head's query heads come first)"
      )
    h = sizes[part_axis]["h"]
    if rules.num_heads is not None and rules.num_heads * len(names) * h == shape[part_axis]:
      # Every query head with its own key and value (MiniMax's lightning
      # attention beside GQA layers): the size says so.
      outer_counts = [rules.num_heads]
    elif rules.num_heads is not None and kv != rules.num_heads:
      grouped = rules.num_heads // kv
      part_sizes = [grouped * h if n == "q" else h for n in names]
      if kv * sum(part_sizes) != shape[part_axis] or grouped * kv != rules.num_heads:
        raise _Misfit(
            f"{kv} key/value heads, each after {grouped} query heads of {h}, do not add "
            f"up to its axis of size {shape[part_axis]}"
        )
      outer_counts = [kv]
  if counts and any(n not in counts for n in outer_counts):
    raise _Misfit(f"its heads axis has {outer_counts} heads, not {sorted(counts)}")
  per_part = []
  for name, role, size in zip(names, roles, part_sizes):
    keeps = _KEEPS[role]
    kept_inner = [c in keeps for c in inner]
    if all(kept_inner):
      head_dim = None
    elif not any(kept_inner):
      head_dim = size if grouped is None else sizes[part_axis]["h"]
    elif inner == "nh":
      head_dim = sizes[part_axis]["h"]
    else:
      raise _Misfit(f"part {name!r} ({role}) cannot cut axis ({group})")
    averaged = []
    for axis, g in enumerate(groups):
      if axis == part_axis:
        continue
      kept = [c in keeps for c in g]
      if not any(kept):
        averaged.append(axis)
      elif not all(kept):
        raise _Misfit(f"part {name!r} ({role}) cannot cut axis ({g})")
    per_part.append((name, size, head_dim, frozenset(averaged)))
  common = frozenset.intersection(*(p[3] for p in per_part))
  parts = tuple(Part(n, size, hd, tuple(sorted(avg - common))) for n, size, hd, avg in per_part)
  if all(p.head_dim is None and not p.reduce_axes for p in parts):
    return _Resolved(tuple(sorted(common)))  # e.g. gate|up: one v per neuron of each
  return _Resolved(tuple(sorted(common)), part_axis=part_axis, parts=parts)


def _resolve(
    rule: Rule,
    logical_shape: tuple[int, ...],
    head_dim: int | None,
    rules: BlockRules,
    where: str,
    stacked: bool = False,
    weight: str | None = None,
    named_layout: str | None = None,
    own: str = "",
    attention_out: tuple[int, int, int] | None = None,
) -> tuple[_Resolved, bool]:
  """The blocks ``rule`` gives one layer's leaf, and whether they come from
  the transposed (PyTorch) reading of its layout; or a ``ValueError`` saying
  why its layout cannot be confirmed and how to settle it.

  ``weight``: the leaf's name if PyTorch names a layer's matrix so
  (:data:`WEIGHT_NAMES`): it may be stored transposed
  (``BlockRules.weight_layout``). ``named_layout``: the layout its haliax
  module names (:func:`_named_layout`), the only one tried. ``own``: the
  pattern the errors suggest a rule for (:func:`_own_pattern`)."""
  target, nd = rule.target, len(logical_shape)
  own = own or rule.pattern
  role = _role(target, rules)
  candidates = _layout_candidates(rule.layout) or _default_layouts(role, logical_shape)
  if role == "tensor" and target == "value":
    candidates = _default_layouts("tensor", logical_shape)
  if named_layout is not None:
    candidates, weight = (named_layout,), None
  transposed: set[str] = set()
  if weight and nd >= 2 and ("," in target or role in _ORIENTED_ROLES):
    flipped = tuple(_transposed(layout) for layout in candidates)
    if rules.weight_layout == "torch":
      candidates, transposed = flipped, set(flipped)
    elif rules.weight_layout is None:
      transposed = set(flipped) - set(candidates)
      candidates = tuple(dict.fromkeys(candidates + flipped))
  fits, misfits = {}, []
  for layout in candidates:
    try:
      fits[layout] = _fit(_parse_layout(layout), logical_shape, role, head_dim, rules, rule.where)
    except _Misfit as e:
      misfits.append((layout, str(e)))
  if weight and nd == 4 and fits and ("," in target or role in _ORIENTED_ROLES):
    fits = _conv_orientation_settles(fits, transposed, logical_shape, rules, where, weight, own, target)
  distinct = set(fits.values())
  if len(distinct) > 1 and attention_out is not None and not transposed:
    # Its attention module's output kernel [heads, head_dim, out] says which
    # axis is the input (the model's width, its out) and the head size.
    _, head, width = attention_out
    sizes = {layout: _single_letter_sizes(layout, logical_shape) for layout in fits}
    agreeing = {layout: fit for layout, fit in fits.items()
                if (sizes[layout].get("i"), sizes[layout].get("h")) == (width, head)}
    if len(set(agreeing.values())) == 1:
      return next(iter(agreeing.values())), False
  shown = f"shape {logical_shape}" + (" (one layer's)" if stacked else "")
  matched = f"rule {rule.pattern!r}" if rule.pattern else "no rule, so the default"
  head = f"{where}: {shown} matched {matched} ({target})"
  if len(distinct) == 1:
    wide = [x for x in fits if _heads_as_wide_as_input(x, logical_shape)]
    if head_dim is None and wide and len(wide) == len(fits):
      # Heads as wide as the input: far more likely a [layers, in, out]
      # kernel whose layers the head counts took for heads (LWM's scanned
      # wq when layers == heads) than an attention layer.
      size = _single_letter_sizes(wide[0], logical_shape)["h"]
      raise ValueError(
          f"{head}, which fits only {wide[0]!r} with heads of {size}, the whole width of "
          "its input: more likely one kernel per layer, the layers taken for heads. "
          + ("" if stacked else f"If its first axis is layers, {_stack_hint(where)}. ")
          + f"If its heads are that wide, pass head_dim={size} to confirm."
      )
    return next(iter(distinct)), bool(fits) and set(fits) <= transposed
  letters = "; ".join(f"{c}={w}" for c, w in _LETTERS.items())
  as_torch = {fits[x] for x in fits if x in transposed}
  as_flax = {fits[x] for x in fits if x not in transposed}
  if transposed and len(as_torch) == 1 and len(as_flax) == 1:
    torch_layout = next(x for x in fits if x in transposed)
    flax_layout = next(x for x in fits if x not in transposed)
    spaced = lambda x: _layout_text(_parse_layout(x))  # noqa: E731
    raise ValueError(
        f"{head}, but a parameter named {weight!r} can be laid out two ways: as "
        f"PyTorch stores it, the transpose of a Flax kernel ({spaced(torch_layout)!r}: a "
        "PyTorch checkpoint read with safetensors, Equinox, a port of PyTorch code), "
        f"or as a Flax kernel ({spaced(flax_layout)!r}: JAX code that names its kernels "
        "so). The shape fits both and they give different blocks, so the partition "
        "would be a guess. Say which for every such leaf: blocks=optax_mini."
        "BlockRules(weight_layout='torch') or weight_layout='flax' "
        f"({letters})."
    )
  if len(distinct) > 1:
    layouts = " or ".join(repr(x) for x in fits)
    # Layouts that differ only in the order of one axis's factors ([q | k | v]
    # runs or (q, k, v) per head) fit any head counts alike.
    orders_only = len({tuple(frozenset(g) for g in _parse_layout(x)) for x in fits}) == 1
    # The check the layout passed goes with it (a fused kernel's parts
    # need it to have sizes without head counts).
    checked = f", where={rule.where!r}" if rule.where else ""
    counts = "" if orders_only else (
        "Settle it with the model's head counts, blocks=optax_mini.BlockRules("
        "num_heads=<query heads>, num_kv_heads=<key/value heads>), or give this "
        "leaf a rule with its layout"
    )
    raise ValueError(
        f"{head}, whose layout could be {layouts} ({letters}); the shape fits "
        "each and they give different blocks, so the partition would be a guess. "
        f"{counts or 'Give this leaf a rule with its layout (how its library splits it)'}, "
        f"e.g. BlockRules(rules=[Rule({own!r}, {target!r}, layout={next(iter(fits))!r}{checked})])."
        + ("" if stacked or nd != 3 else
           " But its first axis may be layers of [in, out] kernels (as many as the model's "
           f"heads, the head counts would take them for the heads): if it is {_stack_hint(where)}.")
    )
  if not candidates:
    known = {
        "heads": "[in, heads*head_dim], [in, heads, head_dim] and 1x1-convolution [1, 1, in, heads*head_dim] kernels",
        "value": "[in, out], [in, heads, head_dim] and 1x1-convolution [1, 1, in, out] kernels",
        "token": "[rows, dim] tables, [1, ..., rows, dim] ones and tables of more axes with "
                 "one axis (the vocabulary) at least 4 times any other but the last (a table "
                 "of more axes could have its rows on any: a tensor-parallel table [shards, "
                 f"vocab, dim / shards], as xlstm-jax's, is Rule({own!r}, 'token', layout='i o i'))",
    }.get(role, "no layout of this rank")
    stack_hint = "" if stacked else (
        f" If it is one layer's kernel in {_stack_hint(where)}."
    )
    raise ValueError(
        f"{head}, which knows {known} only.{stack_hint} Else give it its own rule, e.g. "
        f"blocks=BlockRules(rules=[({own!r}, BlockSpec(reduce_axes=...))]) or a Rule with a layout."
    )
  needs = [layout for layout, reason in misfits if reason == "needs head_dim"]
  if needs:
    # The layout to name is one of this rank whose flat axis holds the heads
    # (a 3-D layout tried on a 2-D leaf has no size to suggest a head from).
    flat = [x for x in needs if len(_parse_layout(x)) == nd
            and any({"n", "h"} <= set(g) for g in _parse_layout(x))] or needs
    groups = _parse_layout(flat[0])
    size = next((logical_shape[a] for a, g in enumerate(groups) if "h" in g and a < nd), 0)
    # No guessed number: a divisor that merely fits (128 for CLIP's 768-wide
    # kernels of 64-wide heads) would be copied, and average heads together.
    # (Only for an axis of heads alone: a fused one holds its parts too.)
    flat_group = next((g for g in groups if "h" in g), "")
    counts = sorted({c for c in (rules.num_heads, rules.num_kv_heads)
                     if c and size % c == 0 and set(flat_group) == {"n", "h"}})
    by_count = "".join(
        f" With {c} heads this axis holds heads of {size // c}." for c in counts if size > c)
    raise ValueError(
        f"{head} laid out {flat[0]!r}, a flat heads*head_dim axis: one v per "
        "attention head needs the head size. Pass head_dim=<size of one head>, the "
        "model config's head_dim or its width over its attention heads (a divisor of "
        f"this {size}-long axis; a dict {{path pattern: size}} where blocks or towers "
        f"differ, as a UNet's do), to adam_mini / scale_by_adam_mini / explain.{by_count} "
        "Or override this leaf with "
        f"blocks=BlockRules(rules=[({own!r}, 'neuron')]) if it is no attention kernel."
    )
  reasons = "; ".join(f"as {layout!r}: {reason}" for layout, reason in misfits)
  # Every layout shorter than the leaf, and no layer axis declared: most
  # likely one layer's kernel stacked over layers.
  stack_hint = "" if stacked or not misfits or any(
      len(_parse_layout(layout)) >= nd for layout, _ in misfits) else (
      f" Its layouts have fewer axes than the leaf: if it is {_stack_hint(where)}."
  )
  if not stacked and not stack_hint and nd == 3 and any(
      _HEADS_IN in layout for layout, _ in misfits):
    stack_hint = f" If its first axis is layers, {_stack_hint(where)}."
  settings = f"head_dim={head_dim}, num_heads={rules.num_heads}, num_kv_heads={rules.num_kv_heads}"
  sizes_h = sorted({int(m.group(1)) for _, reason in misfits
                    for m in [re.search(r"axis \(h\) has size (\d+)", reason)] if m})
  if head_dim is not None and sizes_h:
    # A model whose towers differ in head size (SigLIP's 72 beside Gemma's
    # 256): one size per tower (a tower of 3-D kernels may need none).
    stack_hint += (
        f" If this part of the model has heads of {sizes_h[0]}, give one head size per tower: "
        f"head_dim={{'<its path pattern>': {sizes_h[0]}, '<the rest>': {head_dim}}} (a tower of "
        "3-D [in, heads, head_dim] kernels may need none)."
    )
  if any("e" in group and len(group) > 1 for layout, _ in misfits for group in _parse_layout(layout)):
    settings += f", num_experts={rules.num_experts}"
  checked = [layout for layout, reason in misfits if reason.startswith("its sizes fail")]
  if checked and rule.where and rules.num_heads is not None:
    # The check is the rule's guess for a model without head counts
    # (multi-head); with the counts given, a grouped-query model (Falcon's
    # query_key_value) fails it. A user rule has none.
    stack_hint += (
        f" With the head counts right, the check {rule.where!r} is this rule's guess for a "
        f"multi-head model: give the leaf its own rule, Rule({own!r}, {target!r}, "
        f"layout={checked[0]!r}) (a user rule's layout is read as stored, with no check)."
    )
  raise ValueError(
      f"{head}, but fits none of its layouts ({letters}): {reasons} (with {settings}).{stack_hint} "
      f"{'Else c' if stack_hint else 'C'}heck head_dim / BlockRules(num_heads=..., num_kv_heads=...), "
      f"or give this leaf a rule with its layout, e.g. BlockRules(rules=[Rule({own!r}, "
      f"{target!r}, layout=...)]) or a BlockSpec."
  )


def _repeat_stack(components: Sequence[str]) -> str | None:
  """AXLearn's ``Repeat`` layer's stack (``repeat/layer``: one stack for all
  its layers) if ``components`` pass through one."""
  if "repeat" not in components:
    return None
  at = list(components).index("repeat")
  return "/".join(components[at : at + 2])


def _heads_as_wide_as_input(layout: str, shape: tuple[int, ...]) -> bool:
  """Whether ``layout`` reads ``shape`` as several heads each as wide as the
  input (``"n i h"`` on ``[32, 4096, 4096]``)."""
  sizes = _single_letter_sizes(layout, shape)
  return sizes.get("n", 1) > 1 and "h" in sizes and sizes["h"] == sizes.get("i")


def _stack_hint(where: str) -> str:
  """The fix an error offers for a leaf that may be one layer's stacked."""
  return (
      "a stack of layers (nnx.vmap / nnx.scan, a scanned Linen module, AXLearn's "
      f"repeat/layer), declare the stack instead: BlockRules(stacked={{{_stack_example(where)!r}: 0}}) "
      "(or the axis its layers are on)"
  )


#: Path components that hold a stack of layers when scanned (``layers``,
#: ``h``, ``blocks``, ``scan_*``; unrolled, they hold a list: ``layers/0``;
#: Haiku's ``hk.layer_stack`` module ``__layer_stack_no_state``, AlphaFold's
#: ``evoformer_iteration`` and ``extra_msa_stack``).
_LAYER_CONTAINER = re.compile(
    r"(.*_)?layers?|h|blocks?|scan.*|.*_scan|encoderblock|decoderblock|__layer_stack.*|.*_iteration|.*_stack",
    re.I)


def _stack_example(where: str) -> str:
  """A stack pattern to suggest for the leaf at ``where`` (a path string):
  AXLearn's ``repeat/layer``; else the path up to its last component named
  like a layer container (``layers``, ``h``, ``blocks``, ``scan_*``); else
  up to the leaf's module (a guess the error says to check)."""
  parts = [p for p in re.split(r"[\[\]'/\".]+", where) if p]
  repeat = _repeat_stack(parts[:-1])
  if repeat:
    return repeat
  containers = [i for i, p in enumerate(parts[:-2]) if _LAYER_CONTAINER.fullmatch(p)]
  if containers:
    return "/".join(parts[: containers[-1] + 1])
  return "/".join(parts[:-2]) or "layers"


def _single_letter_sizes(layout: str, shape: tuple[int, ...]) -> dict[str, int]:
  """The sizes of a layout's one-letter axes (``"i n h"`` on ``[512, 8, 64]``:
  ``i=512, n=8, h=64``)."""
  groups = _parse_layout(layout)
  if len(groups) != len(shape):
    return {}
  return {g: size for g, size in zip(groups, shape) if len(g) == 1}


#: The output projections of attention modules stored ``[heads, head_dim,
#: out]``: flax's ``MultiHeadDotProductAttention`` and ``nnx.MultiHeadAttention``
#: (``out``), Keras' ``MultiHeadAttention`` (``attention_output``), tunix's
#: Llama 3 and Qwen (``o_proj/w``; a 2-D ``o_proj`` says nothing), nanodo's
#: ``attn_out_proj`` (also AlgoPerf's LM workload). Beside one,
#: a 3-D query/key/value kernel whose layout could be ``[in, heads,
#: head_dim]`` or heads-first is the one whose input is the out kernel's
#: output and whose head size is its head size.
ATTENTION_OUTPUTS = ("out", "attention_output", "o_proj", "attn_out_proj")
#: The same with the output first, ``[out, heads, head_dim]``: praxis'
#: ``AttentionProjection(is_output_projection=True)`` ``post/w``
#: (``"BNH,DNH->BD"``).
ATTENTION_OUTPUTS_OUT_FIRST = ("post",)
#: The query kernels beside an attention output. One of
#: :data:`ATTENTION_OUTPUTS` with its query's very shape, ``[model, heads,
#: head_dim]``, is stored output first (DeepMind's simply: ``o_proj/w``,
#: ``"ihd,...hd->...i"``), not ``[heads, head_dim, out]`` (tunix's, under the
#: same name).
ATTENTION_QUERIES = ("q_proj", "query", "q", "wq")


def _logical_shape(path: tuple[str, ...], shape: tuple[int, ...], rules: BlockRules) -> tuple[int, ...]:
  """One layer's shape of the leaf at ``path``: its declared stack axes removed."""
  stack = _stack_axes_for(path, len(shape), rules.stacked, "/".join(path))
  return tuple(size for axis, size in enumerate(shape) if axis not in stack)


def _attention_outputs(
    components: tuple[tuple[str, ...], ...], shapes: tuple[tuple[int, ...], ...], rules: BlockRules,
) -> dict[tuple[str, ...], tuple[int, int, int]]:
  """Each attention module's (path, output kernel's ``[heads, head_dim,
  out]`` of one layer): see :data:`ATTENTION_OUTPUTS`."""
  outputs = {}
  shape_of = dict(zip(components, shapes))
  for path, shape in zip(components, shapes):
    if len(path) < 2 or path[-1] not in ("kernel", "w"):
      continue
    out_first = path[-2] in ATTENTION_OUTPUTS_OUT_FIRST and path[-1] == "w"
    if path[-2] not in ATTENTION_OUTPUTS and not out_first:
      continue
    logical = _logical_shape(path, shape, rules)
    if len(logical) == 3 and not out_first:
      queries = (path[:-2] + (name, path[-1]) for name in ATTENTION_QUERIES)
      out_first = len(set(logical)) > 1 and any(
          q in shape_of and _logical_shape(q, shape_of[q], rules) == logical for q in queries)
    if len(logical) == 3:
      outputs[path[:-2]] = logical[1:] + logical[:1] if out_first else logical
  return outputs


#: The default rules for GPT-2's attention output ``c_proj``, square, so
#: its shape cannot say which axis is the output. It is laid out as the
#: fused ``c_attn`` beside it, whose output is its wider axis: HF Flax's
#: FlaxConv1D kernels ``[out, in]``, PyTorch GPT-2's ``Conv1D`` weights
#: ``[in, out]``, GPTBigCode's (StarCoder's) ``nn.Linear`` weights ``[out,
#: in]`` under the same names, a Dense port's ``[in, out]``.
GPT2_C_PROJ = ("attn/c_proj", "crossattention/c_proj")


def _c_proj_layouts(
    components: tuple[tuple[str, ...], ...], shapes: tuple[tuple[int, ...], ...], rules: BlockRules,
) -> dict[tuple[str, ...], str]:
  """Each attention module's ``c_proj`` layout, as stored, from its
  ``c_attn`` (see :data:`GPT2_C_PROJ`)."""
  layouts = {}
  for path, shape in zip(components, shapes):
    if len(path) < 2 or path[-2] != "c_attn" or path[-1] not in ("kernel", "weight"):
      continue
    logical = _logical_shape(path, shape, rules)
    if len(logical) == 2 and logical[0] != logical[1]:
      layouts[path[:-2]] = "o i" if logical[0] > logical[1] else "i o"
  return layouts


#: HF transformers 5 fuses a mixture's experts into parameters of its
#: ``experts`` module, ``gate_up_proj`` (or, without a gate, ``up_proj``)
#: and ``down_proj``: by default stored ``[E, out, in]`` and applied as
#: ``F.linear(x, w[e])`` (Mixtral, Qwen2/3-MoE, Qwen3-Next, OLMoE, PhiMoE,
#: DeepSeek-V3, GLM-4-MoE, MiniMax, Granite MoE, Nemotron-H, ...), and
#: ``[E, in, out]``, applied as ``x @ w[e]``, where its experts are
#: ``is_transposed`` (GPT-OSS, Aria, Llama 4, Ergo; keras-hub's GPT-OSS
#: too, and any Flax ``kernel``, which is read so unless its siblings say
#: otherwise). One tensor's shape cannot say which (Qwen3-30B-A3B's
#: ``gate_up_proj [128, 1536, 2048]`` reads as 1536 inputs as well); its
#: pair can, gate|up's outputs being twice down's inputs, and without a gate
#: the model width can, the input of the router beside the experts
#: (``gate`` or ``router``, ``[E, d]`` or ``[d, E]``). Each name: its
#: parts, and its layout as stored when ``[E, in, out]`` and when ``[E,
#: out, in]``.
EXPERT_WEIGHTS = {
    "gate_up_proj": ("gate,up", "e i (o p)", "e (p o) i"),
    "up_proj": ("neuron", "e i o", "e o i"),
    "down_proj": ("neuron", "e i o", "e o i"),
}
#: The router of a mixture, beside its ``experts`` module.
EXPERT_ROUTERS = ("gate", "router")


class _Unsettled(NamedTuple):
  """Why a leaf's layout, which its siblings should settle, is not settled."""

  message: str


def _expert_weight_layouts(
    components: tuple[tuple[str, ...], ...], shapes: tuple[tuple[int, ...], ...], rules: BlockRules,
) -> dict[tuple[str, ...], str | _Unsettled]:
  """Each fused expert weight's layout as stored (:data:`EXPERT_WEIGHTS`),
  or why its siblings cannot settle it."""
  logical_of = {c: _logical_shape(c, shape, rules) for c, shape in zip(components, shapes)}
  layouts: dict[tuple[str, ...], str | _Unsettled] = {}
  for path, logical in logical_of.items():
    at = next((k for k in range(1, len(path))
               if path[k] in EXPERT_WEIGHTS and path[k - 1] == "experts"), None)
    if at is None or len(logical) != 3:
      continue
    siblings = {name: logical_of.get(path[:at] + (name,) + path[at + 1:]) for name in EXPERT_WEIGHTS}
    down = siblings["down_proj"]
    wide, ratio = siblings["gate_up_proj"], 2
    if wide is None:
      wide, ratio = siblings["up_proj"], 1
    # [E, in, out] (flip 1) or [E, out, in] (flip 0): gate|up [E, ratio * F, d]
    # and down [E, d, F], or [E, d, ratio * F] and [E, F, d].
    fits = [wide is not None and down is not None and len(wide) == len(down) == 3
            and wide[0] == down[0] and wide[1 + flip] == ratio * down[2 - flip]
            and wide[2 - flip] == down[1 + flip] for flip in (0, 1)]
    if ratio == 1 and fits[0]:
      # Without a gate the pair reads the same both ways: the router's input says d.
      width = _router_width(path[:at - 1], wide[0], logical_of)
      fits = [width is not None and wide[2 - flip] == width != wide[1 + flip] for flip in (0, 1)]
    _, in_first, out_first = EXPERT_WEIGHTS[path[at]]
    if fits == [False, True]:
      layouts[path] = in_first
    elif fits == [True, False]:
      layouts[path] = out_first
    elif path[at + 1:] in ((), ("weight",)):  # a PyTorch parameter (a Flax kernel is [E, in, out])
      parts = EXPERT_WEIGHTS[path[at]][0]
      layouts[path] = _Unsettled(
          "a mixture's fused expert weight, stored [experts, out, in] (HF transformers 5's "
          "default, F.linear(x, w[e])) or [experts, in, out] (its transposed experts: GPT-OSS, "
          "Llama 4, Aria, Ergo), and the tree does not say which (its gate|up and down_proj "
          "beside it, whose sizes would tell, or without a gate its up_proj, down_proj and the "
          "router's [experts, d] weight beside the experts). Say which with a rule: "
          f"blocks=optax_mini.BlockRules(rules=[Rule({'experts/' + path[at]!r}, {parts!r}, "
          f"layout={out_first!r})]) for [experts, out, in], layout={in_first!r} for "
          "[experts, in, out].")
  return layouts


def _router_width(
    module: tuple[str, ...], experts: int, logical_of: dict[tuple[str, ...], tuple[int, ...]]
) -> int | None:
  """The input width of the router of ``experts`` experts under ``module``
  (:data:`EXPERT_ROUTERS`), if the tree says it."""
  widths = {
      shape[1 - shape.index(experts)]
      for path, shape in logical_of.items()
      if path[:len(module)] == module and len(path) > len(module)
      and path[len(module)] in EXPERT_ROUTERS and len(shape) == 2 and experts in shape
      and shape[0] != shape[1] and not is_bias(path)
  }
  return widths.pop() if len(widths) == 1 else None


def _stack_axes_for(
    components: tuple[str, ...], ndim: int, stacked: tuple[tuple[str, tuple[int, ...]], ...], where: str
) -> tuple[int, ...]:
  for pattern, axes in stacked:
    if _pattern_matches(pattern, components):
      out = []
      for a in axes:
        if not -ndim <= a < ndim:
          raise ValueError(
              f"{where}: has {ndim} axes, but BlockRules(stacked={{{pattern!r}: "
              f"{axes}}}) declares layer axis {a}. Fix the stacked axis or the pattern."
          )
        out.append(a % ndim)
      return tuple(sorted(set(out)))
  return ()


def _lift(
    spec_axes: tuple[int, ...], logical_to_full: tuple[int, ...], where: str, shape: tuple[int, ...]
) -> tuple[int, ...]:
  nd = len(logical_to_full)
  out = []
  for a in spec_axes:
    if not -nd <= a < nd:
      stacked = len(shape) - nd
      layer = f" ({stacked} layer-stack axes excluded)" if stacked else ""
      raise ValueError(
          f"{where}: shape {shape} has {nd} axes{layer}, but the block spec "
          f"that matched it names axis {a}. Expected axes in [{-nd}, {nd}); fix "
          "the BlockSpec (or the rule's pattern, so it does not match this leaf)."
      )
    out.append(logical_to_full[a % nd])
  return tuple(out)


def block_spec_for(
    path: Sequence[Any],
    leaf: Any,
    *,
    head_dim: HeadDim = None,
    blocks: BlockRules | None = None,
) -> BlockSpec:
  """The :class:`BlockSpec` the rules give one leaf, and so its blocks.

  Args:
    path: the leaf's key path (from ``jax.tree_util.tree_flatten_with_path``)
      or already-normalised string components.
    leaf: an array or anything with ``.shape``.
    head_dim: size of one attention head, for flat query/key kernels, or
      one per tower (:data:`HeadDim`).
    blocks: a :class:`BlockRules`, or ``None`` for the defaults.

  Returns:
    The spec, in the leaf's own axes (stack axes included). A leaf whose
    layout only its siblings settle (HF transformers 5's fused expert
    weights, which raise here) is read by :func:`block_specs` over the
    whole tree.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_mini import block_spec_for
    >>> path = ("layers", "3", "self_attn", "k_proj", "kernel")
    >>> spec = block_spec_for(path, jnp.zeros((64, 32)), head_dim=16)
    >>> spec.role, spec.v_shape((64, 32))  # GQA: two kv heads
    ('heads [k_proj]', (2,))
  """
  rules = blocks if isinstance(blocks, BlockRules) else BlockRules()
  head_dim = check_head_dim(head_dim)
  shape = tuple(int(d) for d in np.shape(leaf))
  if path and all(isinstance(c, str) for c in path):
    components = tuple(c.lower() for c in path)
    where = "/".join(components)
  else:
    components = normalize_path(path)
    where = path_str(path)
  return _spec_for(components, shape, head_dim, rules, where)


def _spec_for(
    components: tuple[str, ...],
    shape: tuple[int, ...],
    head_dim: int | None,
    rules: BlockRules,
    where: str,
) -> BlockSpec:
  # One leaf, no siblings: a PyTorch fused expert weight cannot be settled.
  pair_layout = _expert_weight_layouts((components,), (shape,), rules).get(components)
  return _claim(components, shape, head_dim, rules, where, pair_layout=pair_layout)[0]


def _leaf_head_dim(head_dim: Any, components: tuple[str, ...]) -> int | None:
  """A leaf's head size: ``head_dim`` itself, or, given per tower as
  ``(pattern, size)`` pairs, the first pair whose pattern matches the leaf
  (``None`` if none does: its heads, if any, must then be settled by its
  layout or raise)."""
  if not isinstance(head_dim, tuple):
    return head_dim
  return next((size for pattern, size in head_dim if _pattern_matches(pattern, components)), None)


def _claim(
    components: tuple[str, ...],
    shape: tuple[int, ...],
    head_dim: int | None,
    rules: BlockRules,
    where: str,
    named: _haliax.AxisNames | None = None,
    attention_out: tuple[int, int, int] | None = None,
    beside: frozenset[int] = frozenset(),
    c_proj_layout: str | None = None,
    paired_bias: bool = False,
    pair_layout: str | _Unsettled | None = None,
) -> tuple[BlockSpec, int | None]:
  try:
    return _claim_leaf(components, shape, head_dim, rules, where, named, attention_out, beside,
                       c_proj_layout, paired_bias, pair_layout)
  except ValueError as e:
    declared = [pattern for pattern, _ in rules.stacked]
    if not declared or named is not None or _stack_axes_for(components, len(shape), rules.stacked, where):
      raise
    # A leaf of a layer stack that no declared pattern matches is read as
    # one layer, its layer axis taken for a kernel axis: say so.
    raise ValueError(
        f"{e} Note: BlockRules.stacked declares layer stacks ({', '.join(map(repr, declared))}) "
        "and none matches this leaf. Only if it is in a stack of layers too, add that stack, "
        f"e.g. stacked={{..., {_stack_example(where)!r}: <its layer axis>}} (MaxText's DeepSeek "
        "keeps decoder/dense_layers and decoder/moe_layers: stacked={'decoder/*layers': 1})."
    ) from None


def _claim_leaf(
    components: tuple[str, ...],
    shape: tuple[int, ...],
    head_dim: int | None,
    rules: BlockRules,
    where: str,
    named: _haliax.AxisNames | None = None,
    attention_out: tuple[int, int, int] | None = None,
    beside: frozenset[int] = frozenset(),
    c_proj_layout: str | None = None,
    paired_bias: bool = False,
    pair_layout: str | _Unsettled | None = None,
) -> tuple[BlockSpec, int | None]:
  """The leaf's spec and the index (in ``rules.all_rules()``) of the rule
  that claimed it, ``None`` for the fallback; the index lets
  :func:`warn_unclaimed_rules` find user rules that claimed nothing.

  ``beside``: the indices of the rules with a ``Rule.beside`` signature
  that the tree holds (the others are skipped).

  ``named``: the leaf's haliax axis names, if it is a ``NamedArray``'s
  array: an enclosing ``Stacked``'s layer axis is a stack axis (unless
  ``BlockRules.stacked`` says otherwise), and the weight of a module that
  names its ``In`` and ``Out`` axes is laid out as they say."""
  head_dim = _leaf_head_dim(head_dim, components)
  ndim = len(shape)
  weight = components[-1] if _is_weight_name(components) else None
  stack = _stack_axes_for(components, ndim, rules.stacked, where)
  if named is not None and len(named.names) != ndim:
    named = None  # not the array its names describe (a transformed tree)
  if named is not None and not stack:
    stack = tuple(a for a, kind in enumerate(named.kinds) if kind == _haliax.STACK)
  logical_to_full = tuple(a for a in range(ndim) if a not in stack)
  logical_shape = tuple(shape[a] for a in logical_to_full)
  nd = len(logical_shape)

  def finish(resolved: _Resolved, role: str) -> BlockSpec:
    lift = lambda axes: _lift(axes, logical_to_full, where, shape)  # noqa: E731
    spec = BlockSpec(
        reduce_axes=lift(resolved.reduce_axes),
        head_axis=None if resolved.head_axis is None else lift((resolved.head_axis,))[0],
        head_dim=resolved.head_dim,
        stack_axes=stack,
        role=role,
        part_axis=None if resolved.part_axis is None else lift((resolved.part_axis,))[0],
        parts=tuple(p._replace(reduce_axes=lift(p.reduce_axes)) for p in resolved.parts),
    )
    spec.layout(shape, where)  # validate now: errors name the path
    return spec

  # A user rule claims a bias only if its pattern names it ("attn/*/bias"):
  # a rule for a module ("attention/key") is for its kernel, and leaves the
  # module's bias plain Adam, as the official code's "bias first" does.
  bias_at = _bias_index(components)
  if paired_bias:
    bias_at = len(components) - 1
  present, literals = set(components), _literal_parts(rules)
  for index, rule in enumerate(rules.all_rules()):
    if paired_bias and index == len(rules.rules):
      # <x>_b beside <x>_w (paired_biases): a bias, before any default rule.
      resolved, _ = _resolve(Rule("", "element"), logical_shape, head_dim, rules, where,
                             bool(stack), None, None, _own_pattern(components))
      return finish(resolved, "element (a bias: <x>_b beside <x>_w)"), None
    if not literals[index] <= present or not _rule_matches(rule, components):
      continue
    if rule.beside is not None and index not in beside:
      continue
    if bias_at is not None and index < len(rules.rules) and not _pattern_matches(
        rule.pattern, components, bias_at + 1):
      continue
    if index >= len(rules.rules):  # the defaults: a user rule would have settled it
      _check_not_an_undeclared_stack(components, logical_shape, stack, where)
    target = rule.target
    if named is not None and named.source == _penzai.SOURCE:
      _check_penzai_claim(rule, index < len(rules.rules), nd, named, shape, where, components)
    if isinstance(target, BlockSpec):
      resolved = _Resolved(
          target.reduce_axes, target.head_axis, target.head_dim, target.part_axis, target.parts
      )
      return finish(resolved, f"{target.role} [{_rule_name(rule)}]"), index
    fused = "," in target
    if (fused or target in _KERNEL_ROLES) and nd < 2:
      continue
    if isinstance(rule, _TorchConvRule) and not (
        rules.weight_layout == "torch" and nd >= 3 and logical_shape[-1] == logical_shape[-2]):
      continue
    # A user rule's own layout describes the leaf as stored; the defaults'
    # (and a role's usual layouts) describe Flax kernels.
    literal = (index < len(rules.rules) or isinstance(rule, _StoredRule)) and rule.layout is not None
    if index >= len(rules.rules) and c_proj_layout is not None and rule.pattern in GPT2_C_PROJ:
      # GPT-2's c_proj laid out as the c_attn beside it (GPT2_C_PROJ).
      rule, literal = _StoredRule(rule.pattern, target, c_proj_layout), True
    if (index >= len(rules.rules) and pair_layout is not None
        and rule.pattern.rpartition("/")[2] in EXPERT_WEIGHTS and rule.pattern.startswith("experts/")):
      # A fused expert weight laid out as its siblings say (EXPERT_WEIGHTS).
      if isinstance(pair_layout, _Unsettled):
        raise ValueError(f"{where}: shape {shape}: {pair_layout.message}")
      rule, literal = _StoredRule(rule.pattern, target, pair_layout), True
    if (index >= len(rules.rules) and rule.layout is None and attention_out is not None
        and nd == 3 and components[-2] in ATTENTION_OUTPUTS
        and logical_shape == attention_out[2:] + attention_out[:2] != attention_out):
      # This attention output stored output first (ATTENTION_QUERIES).
      rule = Rule(rule.pattern, target, "o i i")
    named_layout = None
    if named is not None and named.module and not literal:
      named_layout = _named_layout(named, logical_to_full, target, shape, where, components)
    resolved, torch_read = _resolve(
        rule, logical_shape, head_dim, rules, where, bool(stack), None if literal else weight,
        named_layout, _own_pattern(components), attention_out,
    )
    if fused:
      label = f"fused {target.replace(',', '|')} [{_rule_name(rule)}]"
      if not resolved.parts:
        label = f"{PART_ROLES[target.split(',')[0]]} per {target.replace(',', '|')} [{_rule_name(rule)}]"
    elif target == "value" and rules.value_as_one_block:
      label = f"value as one block [{_rule_name(rule)}]"
    elif target == "heads" and rules.query_key_per_neuron:
      label = f"heads per neuron [{_rule_name(rule)}]"
    else:
      label = f"{target} [{_rule_name(rule)}]"
    return finish(resolved, label + _read_as(torch_read, named_layout)), index
  _check_not_an_undeclared_stack(components, logical_shape, stack, where)
  if named is not None and named.source == _penzai.SOURCE:
    _check_penzai_claim(None, False, nd, named, shape, where, components)
  if (nd >= 2 and (stack or _unrolled(components) or _broadcast_scale(logical_shape)) and named is None
      and is_norm_scale(components)):
    # A norm's scale of several axes in a declared stack (xlstm-jax's
    # multi-head norm outnorm/sharded/scale [layers, shards, heads,
    # head_dim]) or in one of unrolled layers (Cohere's per-head q_norm
    # [heads, head_dim] under layers/0): one v per tensor, as the official
    # rule gives any norm. (Else it raised above: an undeclared stack.)
    resolved, _ = _resolve(Rule("", "tensor"), logical_shape, head_dim, rules, where, True, None,
                           None, _own_pattern(components))
    return finish(resolved, "tensor (default: a norm's scale)"), None
  if (
      nd >= 2 and weight is None and named is None and all(d == 1 for d in logical_shape[:-1])
      and not all(c.isdigit() for c in components) and components[-1] != "kernel"
      and not any(fnmatch.fnmatchcase(c, p) for c in components for p in CONV_MODULES)
  ):
    # A learned token [1, ..., 1, d] (big_vision's and scenic's MAP probe
    # and cls, XLNet's mask_emb): one v, as an embedding row or a class
    # token under an embedding's name gets (one per feature would be Adam).
    # Not a Dense kernel of one input, [1, out] (Octo's proprio projection).
    token = Rule("", "token", " ".join(["o"] * (nd - 1) + ["i"]))
    resolved, _ = _resolve(token, logical_shape, head_dim, rules, where, bool(stack), None, None,
                           _own_pattern(components))
    return finish(resolved, "token (default: a learned token [1, ..., d])"), None
  role = "neuron" if nd >= 2 else "tensor"
  fallback = Rule("", role)
  named_layout = None
  if named is not None and named.module and nd >= 2:
    named_layout = _named_layout(named, logical_to_full, role, shape, where, components)
  resolved, torch_read = _resolve(
      fallback, logical_shape, head_dim, rules, where, bool(stack), weight, named_layout,
      _own_pattern(components),
  )
  if named_layout is None:
    _check_default_is_sure(components, logical_shape, torch_read, where, bool(stack))
  return finish(resolved, f"{role} (default{_read_as(torch_read, named_layout)})"), None


def _check_default_is_sure(
    components: tuple[str, ...], logical_shape: tuple[int, ...], torch_read: bool, where: str,
    stacked: bool,
) -> None:
  """Raises where the default (one v per output neuron, the last axis) is a
  guess: a kernel of three or more axes under a name no rule knows, read
  ``[in..., out]``, would average an attention projection's heads (flax's
  DenseGeneral ``[in, heads, head_dim]``, heads-first ``[heads, in,
  head_dim]``, a grouped ``[in, kv_heads, per_group, head_dim]``) or a
  mixture's experts (``[experts, in, out]``, ``[experts, ffn, d]``)
  together, and no shape tells those from an attention output ``[heads,
  head_dim, out]``. It is taken as ``[in..., out]`` where that is the usual
  reading: under a convolution's name (:data:`CONV_MODULES`), for a square
  window of at most :data:`MAX_CONV_WINDOW` in front of 4+ axes, and for a
  PyTorch-layout weight (a convolution's ``[out, in, k...]``; a 3-D one
  only where its output axis is the largest and it sits under no experts'
  module, :data:`MOE_MODULES`), and where every axis but the last has size
  one. A tree without names (a list of arrays, optax's own test inputs) has
  nothing to say otherwise and gets the default, as every leaf of it does."""
  if len(logical_shape) < 3 or all(c.isdigit() for c in components) or any(
      fnmatch.fnmatchcase(c, p) for c in components for p in CONV_MODULES
  ):
    return
  view = logical_shape[::-1] if torch_read else logical_shape
  if all(size == 1 for size in view[:-1]):  # [1, 1, d] (XLNet's mask_emb): nothing to average
    return
  experts = next(
      (c for c in components for p in MOE_MODULES if fnmatch.fnmatchcase(c, p)), None
  )
  if torch_read and experts is None and (len(view) > 3 or view[-1] >= max(view[:-1])):
    return
  window = view[:-2]
  if len(view) > 3 and experts is None and len(set(window)) == 1 and window[0] <= MAX_CONV_WINDOW:
    return  # a square window [k, k, in, out]: Keras' 1x1 se_expand, proj, projection
  own = _own_pattern(components)
  why = (
      f"it sits under {experts!r}, a mixture of experts' module"
      if experts is not None else
      f"its last axis ({view[-1]}) is not its largest"
      if view[-1] < max(view[:-1]) else
      "no rule knows its name"
  )
  shown = f"shape {logical_shape}" + (" (one layer's)" if stacked else "")
  stored = " (a PyTorch-layout weight: rules read it reversed, as a Flax kernel)" if torch_read else ""
  rank = len(logical_shape)
  # Example layouts of this rank: [in, heads..., head_dim], [experts, in..., out].
  heads = " ".join(["i"] + ["n"] * (rank - 2) + ["h"])
  heads_first = " ".join(["n"] * (rank - 2) + ["i", "h"])
  experts_layout = " ".join(["e"] + ["i"] * (rank - 2) + ["o"])
  blocks_out_first = " ".join(["e", "o"] + ["i"] * (rank - 2))
  parts = next((d for d in logical_shape if d in (2, 3)), None)
  tokens_layout = " ".join(["o"] * (rank - 1) + ["i"])
  probes = (
      f"; learned queries or tokens [1, ..., tokens, dim] (a MAP head's probe, bottleneck "
      f"tokens), one v per token, Rule({own!r}, 'token', layout={tokens_layout!r})"
      if logical_shape[0] == 1 else ""
  )
  fused = (
      f"; a fused projection [in, parts, heads, head_dim] (flaxformer's qkv_fused), each part its "
      f"own blocks, Rule({own!r}, {'q,k,v' if parts == 3 else 'k,v'!r}, layout='i p n h')"
      if rank == 4 and parts is not None else ""
  )
  stack_hint = "" if stacked else (
      " If one of its axes counts the layers of a stack (a scanned or vmapped module), declare "
      "it instead: BlockRules(stacked={<the stack's path>: <its layer axis>})."
  )
  raise ValueError(
      f"{where}: {shown} matched no rule, and the default reading, a {rank}-D kernel "
      f"[{', '.join(['in'] * (rank - 1))}, out]{stored} with one v per output neuron (the last axis), is a guess: "
      f"{why}, so it may be an attention projection ([in, heads, head_dim] as flax's "
      "DenseGeneral stores it, or heads-first [heads, in, head_dim]) or a mixture of "
      "experts' [experts, in, out], whose heads or experts that reading would average "
      "together. Say what it is with a rule: a query/key, one v per head, "
      f"blocks=optax_mini.BlockRules(rules=[Rule({own!r}, 'heads', layout={heads!r})]) "
      f"(heads-first: layout={heads_first!r}); a value, one v per output neuron, "
      f"Rule({own!r}, 'value', layout={heads!r}); experts, or the blocks of a block-diagonal "
      f"(headwise) kernel, Rule({own!r}, 'neuron', layout={experts_layout!r}) (a block's output "
      f"before its input, [blocks, out, in]: layout={blocks_out_first!r}); a convolution or any "
      f"[in..., out] kernel, Rule({own!r}, 'neuron')"
      f"{probes}{fused}.{stack_hint}"
  )


def _check_penzai_claim(
    rule: Rule | None, user: bool, nd: int, named: _haliax.AxisNames, shape: tuple[int, ...],
    where: str, components: tuple[str, ...],
) -> None:
  """Raises unless a penzai leaf's reading does not depend on the order of
  its axes: a leaf of fewer than two (non-layer) axes, an ``element`` rule, or
  a user rule that says the layout (an explicit ``layout``, a
  :class:`BlockSpec`, or ``tensor``). Penzai stores a parameter's axes in any
  order (``optax_mini._penzai``), so a rule's usual Flax layouts, or the
  default reading, would be a guess."""
  if nd < 2 or (rule is not None and rule.target == "element"):
    return
  if rule is not None and user and (
      isinstance(rule.target, BlockSpec) or rule.layout is not None or rule.target == "tensor"):
    return
  how = "the default reading" if rule is None else (
      f"reading it by the rule {_rule_name(rule)!r} ({rule.target if isinstance(rule.target, str) else 'BlockSpec'})"
      " with Flax's layouts")
  axes = ", ".join(f"{n or '<positional>'}: {d}" for n, d in zip(named.names, shape))
  # A placeholder, not a layout: copied as is, any concrete one would be a
  # guess of which axes its layer contracts (the very thing unknown here).
  example = "<a letter for each of " + ", ".join(n or "<positional>" for n in named.names) + ">"
  raise ValueError(
      f"{where}: shape {shape} is a penzai NamedArray with axes {{{axes}}}. Penzai keeps "
      "a parameter's axes in the order its model was built or loaded in (its Hugging Face "
      "loaders keep PyTorch's [out, in], a LayerStack's axis comes first or last) and only "
      f"the model's layers say which of them they contract, so {how} would be a guess. "
      "Pass the rules read from the model: adam_mini(..., blocks=optax_mini.penzai_blocks(model)) "
      "(the model whose parameters these are, bound); for a parameter of a layer it does not "
      "know, a rule with its layout, one letter per axis in the array's order (i input, o "
      "output, n heads, h a head's size, e kept): "
      f"penzai_blocks(model, rules=[Rule({_own_pattern(components)!r}, 'neuron', layout={example!r})])."
  )


def _broadcast_scale(shape: tuple[int, ...]) -> bool:
  """A norm's scale shaped to broadcast, its first axis of size one (Haiku's
  hk.BatchNorm scale [1, 1, 1, channels], a LayerNorm over several axes [1,
  h, w, channels]): no layer stack to fear (a stack of one layer averages
  nothing)."""
  return shape[0] == 1


def _unrolled(components: tuple[str, ...]) -> bool:
  """Whether the leaf sits in one of a list of layers (``layers/0/...``):
  its own axes then hold no layer stack."""
  return any(c.isdigit() for c in components[:-1])


def _check_not_an_undeclared_stack(
    components: tuple[str, ...], logical_shape: tuple[int, ...], stack: tuple[int, ...], where: str
) -> None:
  """Raises if a norm's scale has more than one axis and no layer axis is
  declared: its tree is most likely a stack of layers (see :data:`NORM_MODULES`),
  and every kernel in it would have its layers averaged into one block."""
  if (stack or len(logical_shape) < 2 or not is_norm_scale(components) or _unrolled(components)
      or _broadcast_scale(logical_shape)):
    return
  at = next(i for i in range(max(len(components) - 3, 0), len(components) - 1)
            if any(fnmatch.fnmatchcase(components[i], p) for p in NORM_MODULES))
  module, layers = components[at], "/".join(components[:at]) or "<path of the stacked layers>"
  # The stack, not the sublayer holding the norm: the deepest container
  # above it (AlphaFold's evoformer_iteration, not its msa_transition).
  containers = [i for i in range(at) if _LAYER_CONTAINER.fullmatch(components[i])]
  layers = _repeat_stack(components[: at - 1]) or (
      "/".join(components[: containers[-1] + 1]) if containers else layers)
  # Two stacks nested (AlphaFold 3's layer_stack of layer_stacks, its
  # scale [outer, inner, features]): both axes are layers.
  nested = (len(containers) >= 2 and containers[-1] == containers[-2] + 1
            and len(logical_shape) >= 3 and not _repeat_stack(components[: at - 1]))
  axes = "(0, 1)" if nested else "0"
  raise ValueError(
      f"{where}: shape {logical_shape} is a norm's scale ({module!r}) with {len(logical_shape)} "
      "axes, where a norm has one: this looks like a stack of layers (nnx.vmap / nnx.scan, "
      "eqx.filter_vmap, a scanned Linen module) with no layer axis declared, and every "
      "kernel in it would have its layers averaged together. Declare the stack: "
      f"blocks=optax_mini.BlockRules(stacked={{{layers!r}: {axes}}}) if its layer "
      f"{'axes are the first two (two stacks nested)' if nested else 'axis is the first'} "
      "(nnx.vmap, eqx.filter_vmap; MaxText's, T5X's and flaxformer's scanned layers have it "
      f"second: {{{layers!r}: 1}}; it is the axis every leaf under {layers!r} has the same "
      "length on); or, for a norm that has more than one feature axis, give it "
      f"a rule: BlockRules(rules=[({'/'.join(components[at:])!r}, 'tensor')])."
  )


def _own_pattern(components: tuple[str, ...]) -> str:
  """The pattern an error suggests for a leaf's own rule: its module and name
  (``q_proj/w``, ``mlp/wi/kernel`` -> ``wi/kernel``). A rule for the name
  that matched (``mlp``, ``q_proj``) would claim its siblings too: the
  module's bias, every kernel under ``mlp``. A module named only by its
  class (Haiku's ``linear``, ``linear_1``; Linen's ``Dense_0``) comes with
  its parent, the one ``linear/w`` being every ``hk.Linear`` of the tree."""
  named = [c for c in components if not c.isdigit()]
  if len(named) >= 3 and re.fullmatch(r"(linear|dense|dense_general|conv)(_\d+)?", named[-2], re.I):
    # from the parent on, as a run of the path's components (Haiku's "~"
    # kept, a layer index any: "*")
    parents = [i for i, c in enumerate(components[:-2]) if not c.isdigit() and c != "~"]
    if parents:
      return "/".join("*" if c.isdigit() else c for c in components[parents[-1]:])
  return "/".join(named[-2:])


def _read_as(torch_read: bool, named_layout: str | None) -> str:
  """How :func:`optax_mini.explain` labels a leaf's reading."""
  if named_layout is not None:
    return f", named axes {named_layout!r}"
  return ", torch layout" if torch_read else ""


def _named_layout(
    named: _haliax.AxisNames,
    logical_to_full: tuple[int, ...],
    target: str,
    shape: tuple[int, ...],
    where: str,
    components: tuple[str, ...],
) -> str:
  """The layout of one layer's haliax weight, from its module's ``In`` and
  ``Out``: inputs are ``i``; outputs are ``o``, or, for a query/key/value or
  fused kernel, what :data:`NAMED_AXIS_LETTERS` says their names are. A
  query/key weight with one unnamed output axis has it flat (``(n h)``,
  cut by ``head_dim``)."""
  pattern = _own_pattern(components)  # (a NamedArray's array is under its index)
  fused = "," in target
  detailed = fused or target in ("heads", "value")
  groups = []
  for axis in logical_to_full:
    kind, name = named.kinds[axis], named.names[axis]
    if kind == _haliax.IN:
      groups.append("i")
      continue
    if kind != _haliax.OUT:
      raise ValueError(
          f"{where}: shape {shape}, the weight of a haliax {named.module} with axes "
          f"{named.names}: axis {name!r} is none of the module's In or Out axes nor "
          "the layer axis of an enclosing Stacked, so its blocks would be a guess. "
          f"Give this leaf a BlockSpec: blocks=optax_mini.BlockRules(rules=[({pattern!r}, "
          "BlockSpec(reduce_axes=..., stack_axes=...))]) (axes index the leaf as it is)."
      )
    letter = "o"
    if detailed:
      letter = next(
          (c for pattern, c in NAMED_AXIS_LETTERS
           if fnmatch.fnmatchcase(name.lower(), pattern) and (c != "p" or fused)),
          "o",
      )
    groups.append(letter)
  if target == "heads" and "n" not in groups and groups.count("o") == 1:
    groups[groups.index("o")] = "nh"
  if (target == "heads" and "o" in groups) or (fused and "p" not in groups):
    outputs = [n for a, n in enumerate(named.names) if named.kinds[a] == _haliax.OUT]
    raise ValueError(
        f"{where}: shape {shape}, the weight of a haliax {named.module} with axes "
        f"{named.names}, matched a {target!r} rule, but its output axes {outputs} are "
        "not all named as attention heads, a head's size or fused parts "
        f"(optax_mini.blocks.NAMED_AXIS_LETTERS), so its blocks would be a guess. Give "
        f"this leaf a rule with its layout, e.g. BlockRules(rules=[Rule({pattern!r}, "
        f"{target!r}, layout=...)]), one letter per axis as stored but a Stacked's layer "
        "axis (i=input; o=output; n=heads; h=head_dim; p=parts; e=experts)."
    )
  return _layout_text(groups)


def check_head_dim(head_dim: Any) -> int | tuple[tuple[str, int | None], ...] | None:
  """Validates ``head_dim``: a positive Python int, ``None``, or a mapping
  from path patterns to those (a model whose towers have heads of different
  sizes), returned as a tuple of ``(pattern, size)`` pairs (hashable)."""
  if head_dim is None:
    return None
  if isinstance(head_dim, Mapping) or (
      isinstance(head_dim, tuple) and all(isinstance(x, tuple) and len(x) == 2 for x in head_dim)
  ):
    pairs = tuple(head_dim.items()) if isinstance(head_dim, Mapping) else head_dim
    for pattern, _ in pairs:
      if not isinstance(pattern, str) or not pattern.strip("/"):
        raise ValueError(
            f"head_dim={dict(pairs)!r}: keys are path patterns (strings, as in a Rule: "
            f"'image_encoder', 'vision_encoder/*/query'), got {pattern!r}."
        )
    return tuple((pattern, _check_one_head_dim(size)) for pattern, size in pairs)
  return _check_one_head_dim(head_dim)


def _check_one_head_dim(head_dim: Any) -> int | None:
  if head_dim is None:
    return None
  if isinstance(head_dim, bool) or not isinstance(head_dim, (int, np.integer)):
    raise ValueError(
        f"head_dim must be a positive Python int (or None), got {head_dim!r} of "
        f"type {type(head_dim).__name__}, or a mapping from path patterns to "
        "those ({'vision_encoder': 72, 'decoder': 128}). It fixes shapes, so it "
        "cannot be a traced value: under optax.inject_hyperparams pass "
        "static_args=('head_dim',)."
    )
  if head_dim <= 0:
    raise ValueError(f"head_dim must be positive, got {head_dim}.")
  return int(head_dim)


def _as_block_rules(blocks: Blocks) -> BlockRules | None:
  """``BlockRules`` for rule-like ``blocks``; ``None`` for a spec pytree."""
  if blocks is None:
    return BlockRules()
  if isinstance(blocks, BlockRules):
    return blocks
  if isinstance(blocks, (list, tuple)) and all(
      isinstance(r, Rule)
      or (isinstance(r, (list, tuple)) and 2 <= len(r) <= 4 and isinstance(r[0], str))
      for r in blocks
  ) and len(blocks) > 0:
    return BlockRules(rules=tuple(blocks))
  if callable(blocks):
    raise TypeError(
        "blocks= takes a BlockRules, a list of (pattern, role) rules, or a "
        "pytree of BlockSpec, not a function (optax.inject_hyperparams would "
        "mistake it for a schedule). Express the partition as rules."
    )
  return None


def block_specs(
    params: Any,
    *,
    head_dim: HeadDim = None,
    blocks: Blocks = None,
) -> Any:
  """A pytree of :class:`BlockSpec`, one per leaf of ``params``.

  Args:
    params: the parameter (or gradient) pytree; leaves need only ``.shape``
      (``jax.ShapeDtypeStruct`` works).
    head_dim: size of one attention head, for flat query/key kernels, or
      one per tower (:data:`HeadDim`).
    blocks: ``None`` (the default rules), a :class:`BlockRules`, a list of
      ``(pattern, target)`` rules, or a pytree of :class:`BlockSpec` with the
      structure of ``params`` (each spec is checked against its leaf).

  Returns:
    A pytree with the structure of ``params`` and a :class:`BlockSpec` per leaf.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_mini
    >>> params = {"embed_tokens": {"embedding": jnp.zeros((100, 8))},
    ...           "norm": {"scale": jnp.zeros(8)}}
    >>> specs = optax_mini.block_specs(params)
    >>> specs["embed_tokens"]["embedding"].v_shape((100, 8))
    (100,)
    >>> specs["norm"]["scale"].v_shape((8,))
    ()
  """
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths, named = leaf_paths(params, tuple(p for p, _ in leaves_with_path))
  specs = _flat_specs(
      paths,
      tuple(tuple(np.shape(x)) for _, x in leaves_with_path),
      treedef,
      head_dim,
      blocks,
      named,
  )
  return jax.tree_util.tree_unflatten(treedef, specs)


def leaf_paths(tree: Any, paths: tuple[Any, ...]) -> tuple[tuple[Any, ...], Any]:
  """The key paths the partition reads ``tree`` 's leaves by, and their axis
  names (``None`` for a tree without named arrays).

  ``paths`` are the leaves' key paths, as ``jax.tree_util.tree_flatten_with_path``
  gives them; a penzai value's is replaced by its label (``_penzai.leaf_info``),
  and haliax / penzai arrays bring the names of their axes.
  """
  named = _haliax.axis_names(tree)
  penzai = _penzai.leaf_info(tree, paths)
  if penzai is not None:
    paths, penzai_named = penzai
    named = penzai_named if named is None else tuple(
        a if a is not None else b for a, b in zip(named, penzai_named)
    )
  return tuple(paths), named


def _flat_specs(paths, shapes, treedef, head_dim, blocks, named=None) -> list[BlockSpec]:
  """One spec per leaf; ``named``: :func:`_haliax.axis_names` of the tree."""
  head_dim = check_head_dim(head_dim)
  rules = _as_block_rules(blocks)
  if rules is not None:
    return list(_flat_specs_from_rules(paths, shapes, head_dim, rules, named))
  # A pytree of BlockSpec, same structure as the parameters.
  spec_leaves, spec_def = jax.tree_util.tree_flatten(
      blocks, is_leaf=lambda x: isinstance(x, BlockSpec)
  )
  if spec_def.num_leaves != treedef.num_leaves or not all(
      isinstance(s, BlockSpec) for s in spec_leaves
  ):
    raise ValueError(
        "blocks= is neither a BlockRules, a list of (pattern, role) rules, nor "
        f"a pytree of BlockSpec matching the parameters: the parameters have "
        f"{treedef.num_leaves} leaves ({treedef}), blocks= gives "
        f"{spec_def.num_leaves} ({spec_def}). Give one BlockSpec per parameter "
        "leaf, or use BlockRules for partial overrides."
    )
  try:
    spec_leaves = treedef.flatten_up_to(
        jax.tree_util.tree_unflatten(spec_def, spec_leaves)
    )
  except (ValueError, TypeError) as e:
    raise ValueError(
        "blocks=: the pytree of BlockSpec does not have the parameters' "
        f"structure ({e}). Give one BlockSpec per parameter leaf."
    ) from None
  for path, shape, spec in zip(paths, shapes, spec_leaves):
    spec.layout(shape, path_str(path))
  return list(spec_leaves)


def _flat_specs_from_rules(paths, shapes, head_dim, rules, named=None) -> tuple[BlockSpec, ...]:
  return tuple(spec for spec, _ in _flat_claims_from_rules(paths, shapes, head_dim, rules, named))


@functools.lru_cache(maxsize=256)
def _flat_claims_from_rules(
    paths, shapes, head_dim, rules, named=None
) -> tuple[tuple[BlockSpec, int | None], ...]:
  named = named or (None,) * len(paths)
  components = tuple(normalize_path(path) for path in paths)
  outputs = _attention_outputs(components, shapes, rules)
  beside = frozenset(
      index for index, rule in enumerate(rules.all_rules())
      if rule.beside is not None and any(_pattern_matches(rule.beside, c) for c in components)
  )
  _check_stacks_agree(components, paths, shapes, rules)
  _check_lora_not_an_undeclared_stack(components, paths, shapes, rules, named)
  # An undeclared layer stack first: a stacked tree's kernels raise errors of
  # their own (a head layout the head counts would "settle" with the layer
  # axis read as heads), whose advice is wrong until the stack is declared.
  for c, path, shape, names in zip(components, paths, shapes, named):
    if names is None and not any(_pattern_matches(rule.pattern, c) for rule in rules.rules):
      stack = _stack_axes_for(c, len(shape), rules.stacked, path_str(path))
      logical = tuple(size for axis, size in enumerate(shape) if axis not in stack)
      _check_not_an_undeclared_stack(c, logical, stack, path_str(path))
  c_proj = _c_proj_layouts(components, shapes, rules)
  paired = paired_biases(components)
  experts = _expert_weight_layouts(components, shapes, rules)
  return tuple(
      _claim(c, shape, head_dim, rules, path_str(path), names, outputs.get(c[:-2]), beside,
             c_proj.get(c[:-2]) if c[-2:-1] == ("c_proj",) else None, c in paired, experts.get(c))
      for c, path, shape, names in zip(components, paths, shapes, named)
  )


def _stack_prefix(pattern: str, components: tuple[str, ...]) -> tuple[str, ...] | None:
  """The components up to the end of ``pattern`` 's first match: the
  stack of layers a leaf belongs to (``decoder/*layers`` matches MaxText
  DeepSeek's ``dense_layers`` and ``moe_layers``, two stacks)."""
  parts = tuple(pattern.lower().strip("/").split("/"))
  n = len(parts)
  for start in range(max(len(components) - n + 1, 0)):
    if all(fnmatch.fnmatchcase(components[start + i], parts[i]) for i in range(n)):
      return components[: start + n]
  return None


#: Names of LoRA factors (flax's nnx.LoRA, qwix's, Keras', gemma's lora/a).
LORA_NAMES = ("lora_a", "lora_b", "*_lora_a", "*_lora_b", "lora_kernel_a", "lora_kernel_b",
              "lora_embeddings_a", "lora_embeddings_b")


def _is_lora_factor(components: tuple[str, ...]) -> bool:
  if not components:  # a bare array, the whole tree
    return False
  return any(fnmatch.fnmatchcase(components[-1], p) for p in LORA_NAMES) or any(
      _pattern_matches(p, components, len(components)) for p in LORA_FACTORS + QUAX_LORA_FACTORS)


def _check_lora_not_an_undeclared_stack(components, paths, shapes, rules: BlockRules, named) -> None:
  """Raises if the LoRA factors under one layer container (``decoder/layers``)
  all have three or more axes, one of their first two the same length in
  every one, and no layer axis is declared: the factors of a scanned model
  (MaxText's ``kernel_lora_a [in, layers, rank]``, ``kernel_lora_b [rank,
  layers, out]``). A tree of LoRA factors alone (``nnx.Optimizer(...,
  wrt=nnx.LoRAParam)``) has no norm scale to give the stack away, and each A
  would have its layers averaged into its inputs."""
  groups: dict[tuple[str, ...], list[tuple[str, tuple[int, ...]]]] = {}
  for c, path, shape, names in zip(components, paths, shapes, named):
    if names is not None or not _is_lora_factor(c) or _unrolled(c):
      continue  # (a haliax or penzai leaf names its layer axis)
    if any(_pattern_matches(r.pattern, c) for r in rules.rules):
      continue
    if _stack_axes_for(c, len(shape), rules.stacked, path_str(path)):
      continue
    containers = [i for i, part in enumerate(c[:-2]) if _LAYER_CONTAINER.fullmatch(part)]
    if containers:
      groups.setdefault(c[: containers[-1] + 1], []).append((path_str(path), tuple(shape)))
  for prefix, leaves in groups.items():
    if len(leaves) < 2 or any(len(shape) < 3 for _, shape in leaves):
      continue
    common = [a for a in (0, 1) if len({shape[a] for _, shape in leaves}) == 1 and leaves[0][1][a] > 1]
    if not common:
      continue
    layers, axis = "/".join(prefix), common[-1]
    shown = "; ".join(f"{w}: shape {s}" for w, s in leaves[:2])
    raise ValueError(
        f"The {len(leaves)} LoRA factors under {layers!r} ({shown}; ...) all have three or more "
        f"axes, axis {axis} of length {leaves[0][1][axis]} in every one: this looks like a "
        "stack of layers (a scanned Linen module, nnx.scan / nnx.vmap) with no layer axis "
        "declared, and each factor would have its layers averaged together. Declare the "
        f"stack: blocks=optax_mini.BlockRules(stacked={{{layers!r}: {axis}}}) (MaxText's scanned "
        "layers have it second, nnx.vmap first); or, if these are not stacked layers, give "
        "the factors rules with their layouts (BlockRules(rules=[...]))."
    )


def _check_stacks_agree(components, paths, shapes, rules: BlockRules) -> None:
  """Raises if the leaves of one stack of layers (those under one match of a
  ``BlockRules.stacked`` pattern) differ in length along the declared layer
  axes: every leaf of a stack has one entry per layer, so the axis is wrong
  (T5X's and flaxformer's scanned layers keep it second, ``nnx.vmap`` first),
  and reading another axis as the layers would average the layers together."""
  groups: dict[tuple[Any, ...], list[tuple[str, tuple[int, ...]]]] = {}
  for c, path, shape in zip(components, paths, shapes):
    for pattern, axes in rules.stacked:
      prefix = _stack_prefix(pattern, c)
      if prefix is None:
        continue
      if all(-len(shape) <= a < len(shape) for a in axes):
        groups.setdefault((pattern, axes, prefix), []).append((path_str(path), tuple(shape)))
      break
  for (pattern, axes, prefix), leaves in groups.items():
    counts = {tuple(shape[a] for a in axes) for _, shape in leaves}
    if len(counts) <= 1:
      continue
    by_count: dict[tuple[int, ...], tuple[str, tuple[int, ...]]] = {}
    for where, shape in leaves:
      by_count.setdefault(tuple(shape[a] for a in axes), (where, shape))
    shown = "; ".join(f"{w}: shape {s}" for w, s in list(by_count.values())[:3])
    rank = min(len(s) for _, s in leaves)
    common = [
        a for a in range(rank) if len({s[a] for _, s in leaves}) == 1
    ]
    hint = (
        f" The axis every one of them has the same length on is {common[0]} "
        f"({leaves[0][1][common[0]]} layers?): stacked={{{pattern!r}: {common[0]}}}."
        if len(common) == 1 else ""
    )
    raise ValueError(
        f"BlockRules(stacked={{{pattern!r}: {axes if len(axes) > 1 else axes[0]}}}): the leaves "
        f"under {'/'.join(prefix)} have {len(counts)} different lengths along the declared layer "
        f"axis ({shown}), where every leaf of one stack of layers has one entry per layer: the "
        "axis is not the layer axis, and reading it so would average each kernel's layers "
        "together. Declare the axis that holds the layers (nnx.vmap/nnx.scan, "
        "eqx.filter_vmap: 0; MaxText's, T5X's and flaxformer's scanned layers: 1), or a "
        f"pattern that matches one stack only.{hint}"
    )


def warn_unclaimed_rules(
    paths, shapes, head_dim: int | None, blocks: Blocks, named=None
) -> None:
  """Warns, naming it, about each user rule or ``stacked`` pattern that
  claimed no leaf (usually a typo, or a rule shadowed by an earlier one).

  Called by ``init`` only, so a training loop does not warn on every update
  trace; each (tree, rules) pair warns once. :data:`DEFAULT_RULES` never warn:
  most of them match nothing in any one model.
  """
  rules = _as_block_rules(blocks)
  if rules is None or not (rules.rules or rules.stacked):
    return
  _warn_unclaimed_once(
      tuple(paths), tuple(tuple(s) for s in shapes), check_head_dim(head_dim), rules, named
  )


@functools.lru_cache(maxsize=256)
def _warn_unclaimed_once(paths, shapes, head_dim, rules, named=None) -> None:
  # Cached so that the same optimizer init (explain() traces it twice, a
  # notebook cell re-runs it) warns once per rule.
  claimed = {
      index for _, index in _flat_claims_from_rules(paths, shapes, head_dim, rules, named)
  }
  components = [normalize_path(path) for path in paths]
  for index, rule in enumerate(rules.rules):
    if index in claimed or isinstance(rule, _ModelRule):
      continue
    target = rule.target if isinstance(rule.target, str) else "BlockSpec(...)"
    matched = sum(_pattern_matches(rule.pattern, c) for c in components)
    if matched and rule.beside is not None and not any(
        _pattern_matches(rule.beside, c) for c in components):
      why = (
          f"matched {matched} parameter path(s) but its beside pattern {rule.beside!r} "
          "matched no parameter, so it applies to none"
      )
    elif matched:
      why = (
          f"matched {matched} parameter path(s) but claimed none of them: an earlier "
          "rule claims them first (first match wins), or the role needs leaves with "
          "at least two (non-layer) axes"
      )
    else:
      why = (
          "matched no parameter: patterns match whole '/'-separated path components "
          "(see the paths optax_mini.explain(params) prints)"
      )
    warnings.warn(f"BlockRules: rule ({rule.pattern!r}, {target!r}) {why}.", UserWarning, stacklevel=4)
  for pattern, axes in rules.stacked:
    if not any(_pattern_matches(pattern, c) for c in components):
      warnings.warn(
          f"BlockRules: stacked pattern {pattern!r} (layer axes {axes}) matched no "
          "parameter, so no leaf is treated as a layer stack through it.",
          UserWarning,
          stacklevel=4,
      )
