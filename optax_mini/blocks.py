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
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Union

import jax
import numpy as np

__all__ = [
    "ROLES",
    "DEFAULT_RULES",
    "BlockSpec",
    "BlockRules",
    "Rule",
    "block_spec_for",
    "block_specs",
    "normalize_path",
]

ROLES = ("element", "heads", "token", "value", "neuron", "tensor")
# Roles that describe a kernel; they claim only leaves with >= 2 logical axes.
_KERNEL_ROLES = frozenset({"heads", "token", "value", "neuron"})


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """How one parameter leaf is cut into Adam-mini blocks.

  Every axis of the leaf is either *averaged* (it lies inside a block) or
  *kept* (it indexes blocks, so it appears in ``v``'s shape). Optionally one
  axis of size ``n * head_dim`` is viewed as ``[n, head_dim]`` (head-major, as
  ``x.reshape(..., n, head_dim)`` does): its ``head_dim`` part is averaged and
  its ``n`` part kept, which is how flat ``[in, heads*head_dim]`` query/key
  kernels get one ``v`` per head.

  Attributes:
    reduce_axes: axes averaged inside each block.
    head_axis: the axis split into ``[n, head_dim]``, or ``None``.
    head_dim: size of one head along ``head_axis``.
    stack_axes: layer-stack axes (``nnx.scan``/``nnx.vmap``: 0, MaxText: 1).
      They are always kept: giving one that is also averaged is an error.
    role: a label shown by :func:`optax_mini.explain`.

  In a pytree of specs passed as ``blocks=``, axes index the leaf as it is. In
  a :class:`Rule`, axes index one layer's leaf (stack axes removed) and are
  shifted onto the stacked leaf automatically.

  Example:
    >>> from optax_mini import BlockSpec
    >>> spec = BlockSpec(reduce_axes=(0,), head_axis=1, head_dim=8)
    >>> spec.v_shape((32, 64))  # flat q kernel, 8 heads of 8
    (8,)
  """

  reduce_axes: tuple[int, ...] = ()
  head_axis: int | None = None
  head_dim: int | None = None
  stack_axes: tuple[int, ...] = ()
  role: str = "custom"

  def __post_init__(self):
    object.__setattr__(self, "reduce_axes", _int_tuple(self.reduce_axes))
    object.__setattr__(self, "stack_axes", _int_tuple(self.stack_axes))
    if (self.head_axis is None) != (self.head_dim is None):
      raise ValueError(
          "BlockSpec: head_axis and head_dim go together; got "
          f"head_axis={self.head_axis}, head_dim={self.head_dim}."
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
      rest_reduce=tuple(rest_reduce),
  )


class Rule(NamedTuple):
  """Maps parameter paths to a role or a :class:`BlockSpec`.

  ``pattern`` is a ``/``-separated sequence of path-component globs
  (``fnmatch``, case-insensitive). It matches a leaf when it equals a run of
  consecutive *whole* components of the leaf's normalised path, anywhere in
  it: ``"q_proj"`` matches ``layers/3/self_attn/q_proj/kernel`` but not
  ``layers/3/self_attn/q_proj_lora/kernel``; ``"attn/*/kernel"`` matches
  ``attn/query/kernel``.

  ``target`` is one of :data:`ROLES` or a :class:`BlockSpec` written for one
  layer's leaf.

  Example:
    >>> from optax_mini import Rule, BlockSpec
    >>> Rule("c_attn", "heads").matches(("h", "0", "attn", "c_attn", "kernel"))
    True
    >>> Rule("kv_einsum/w", BlockSpec(reduce_axes=(2, 3), role="heads")).pattern
    'kv_einsum/w'
  """

  pattern: str
  target: Union[str, BlockSpec]

  def matches(self, components: Sequence[str]) -> bool:
    """Whether the pattern equals a run of whole path components."""
    return _pattern_matches(self.pattern, tuple(components))


@functools.lru_cache(maxsize=4096)
def _pattern_matches(pattern: str, components: tuple[str, ...]) -> bool:
  parts = tuple(p for p in pattern.lower().strip("/").split("/"))
  n = len(parts)
  for start in range(len(components) - n + 1):
    if all(
        fnmatch.fnmatchcase(components[start + i], parts[i]) for i in range(n)
    ):
      return True
  return False


#: Path components that name a bias: plain Adam, and no weight decay (the
#: official code checks "bias" first, for both).
BIAS_PATTERNS = ("bias", "*_bias")


def is_bias(components: Sequence[str]) -> bool:
  """Whether a normalised path names a bias (see :data:`BIAS_PATTERNS`)."""
  return any(_pattern_matches(p, tuple(components)) for p in BIAS_PATTERNS)


def _rules(target: str, *patterns: str) -> tuple[Rule, ...]:
  return tuple(Rule(p, target) for p in patterns)


#: The default partition, in order; first match wins. It is the official
#: v1.1.1 partition (REFERENCE.md) on whole path components, for the names of
#: HuggingFace/NNX, Meta/EasyLM, GPT-2, MaxText/flax and Gemma models.
DEFAULT_RULES: tuple[Rule, ...] = (
    # Official: any name containing "bias" is plain Adam, checked first.
    *_rules("element", *BIAS_PATTERNS),
    # One v per head. Flat [in, heads*head_dim] kernels need head_dim; fused
    # qkv kernels split into heads of head_dim just the same (the official
    # code silently gives GPT-2's c_attn one scalar).
    *_rules("heads", "q_proj", "k_proj", "wq", "wk", "query", "key"),
    *_rules("heads", "qkv_proj", "qkv", "wqkv", "c_attn", "query_key_value"),
    # Gemma puts heads first: q_einsum [N, D, H], kv_einsum [2, K, D, H].
    Rule("q_einsum/w", BlockSpec(reduce_axes=(1, 2), role="heads")),
    Rule("kv_einsum/w", BlockSpec(reduce_axes=(2, 3), role="heads")),
    # One v per token: embedding tables are [vocab, dim] in Flax.
    *_rules(
        "token", "embed", "embd", "wte", "wpe", "embed_tokens", "tok_embeddings",
        "token_embedder", "word_embeddings", "position_embeddings", "embedding",
    ),
    # Values: one v per output neuron, i.e. only the input axis is averaged
    # ([in, heads, head_dim] -> [heads, head_dim]).
    *_rules("value", "v_proj", "wv", "value"),
    # Per output neuron: lm_head [dim, vocab] keeps vocab (one v per token, as
    # in the official "output" rule); attention out [heads, head_dim, out] and
    # MLP kernels keep out. Listed so explain() names them; the fallback for
    # unnamed kernels does the same.
    *_rules("neuron", "lm_head", "output", "final_layer", "logits_dense"),
    *_rules("neuron", "o_proj", "wo", "out", "attn_vec_einsum", "c_proj"),
    *_rules(
        "neuron", "mlp", "feed_forward", "gate_proj", "up_proj", "down_proj",
        "w1", "w2", "w3", "wi", "wi_0", "wi_1", "fc1", "fc2", "c_fc",
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
      consulted for it). A rule that claims no leaf at all (a typo, or a rule
      shadowed by earlier ones) draws one ``UserWarning`` naming it when the
      optimizer state is initialised.
    stacked: ``{pattern: axis}``: leaves whose path matches ``pattern`` carry
      layer-stack axes (``nnx.scan``/``nnx.vmap``: ``0``; MaxText: ``1``); an
      int or a tuple of ints; the first matching pattern wins, so put the
      more specific ones first. Rules then apply per layer, the stack axes are
      never averaged, and the default weight-decay mask does not count them.
    value_as_one_block: treat each value projection as one block (per layer),
      as the official README advises for runs shorter than ~10k steps
      (paper, Appendix C.3).
    use_defaults: also try :data:`DEFAULT_RULES` after ``rules``.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_mini
    >>> params = {"layers": {"attn": {"wv": {"kernel": jnp.zeros((4, 16, 16))}}}}
    >>> rules = optax_mini.BlockRules(stacked={"layers": 0}, value_as_one_block=True)
    >>> spec = optax_mini.block_specs(params, blocks=rules)["layers"]["attn"]["wv"]["kernel"]
    >>> spec.v_shape((4, 16, 16))  # one v per layer
    (4,)
  """

  rules: tuple[Rule, ...] = ()
  stacked: tuple[tuple[str, tuple[int, ...]], ...] = ()
  value_as_one_block: bool = False
  use_defaults: bool = True

  def __post_init__(self):
    rules = tuple(
        r if isinstance(r, Rule) else Rule(*r) for r in _as_items(self.rules)
    )
    for rule in rules:
      if not isinstance(rule.pattern, str) or not rule.pattern.strip("/"):
        raise ValueError(f"BlockRules: rule pattern must be a non-empty str, got {rule.pattern!r}.")
      if not isinstance(rule.target, BlockSpec) and rule.target not in ROLES:
        raise ValueError(
            f"BlockRules: rule {rule.pattern!r} has target {rule.target!r}; "
            f"expected a BlockSpec or one of {ROLES}."
        )
    stacked = tuple((str(p), _int_tuple(a)) for p, a in _as_items(self.stacked))
    object.__setattr__(self, "rules", rules)
    object.__setattr__(self, "stacked", stacked)

  def all_rules(self) -> tuple[Rule, ...]:
    """The user rules followed (unless disabled) by the defaults."""
    return self.rules + (DEFAULT_RULES if self.use_defaults else ())


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
  ``FlattenedIndexKey`` all become plain strings. A trailing ``.value``
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
  """
  keys = list(path)
  if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name == "value":
    keys.pop()
  out = []
  for key in keys:
    if isinstance(key, jax.tree_util.DictKey):
      out.append(str(key.key))
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


def _role_spec(
    role: str, logical_shape: tuple[int, ...], head_dim: int | None, where: str, pattern: str
) -> tuple[tuple[int, ...], int | None, int | None]:
  """(reduce_axes, head_axis, head_dim) of a role on one layer's leaf."""
  ndim = len(logical_shape)
  if role == "element":
    return (), None, None
  if role == "tensor":
    return tuple(range(ndim)), None, None
  if role == "token":
    return tuple(range(1, ndim)), None, None
  if role == "neuron":
    return tuple(range(ndim - 1)), None, None
  if role == "value":
    return (0,), None, None
  if role == "heads":
    if ndim == 2:
      if head_dim is None:
        raise ValueError(
            f"{where}: shape {logical_shape} is a flat query/key kernel (rule "
            f"{pattern!r}) laid out [in, heads*head_dim]; one v per attention "
            "head needs the head size. Pass head_dim=<size of one head> (e.g. "
            f"head_dim={_example_head_dim(logical_shape[1])}) to adam_mini / "
            "scale_by_adam_mini / explain, or override this leaf with "
            f"blocks=BlockRules(rules=[({pattern!r}, 'neuron')])."
        )
      return (0,), 1, head_dim
    if ndim == 3:
      # DenseGeneral/LinearGeneral layout [in, heads, head_dim].
      if head_dim is not None and logical_shape[2] != head_dim:
        raise ValueError(
            f"{where}: shape {logical_shape} is a query/key kernel (rule "
            f"{pattern!r}) read as [in, heads, head_dim], but its last axis is "
            f"{logical_shape[2]} and head_dim={head_dim}. If heads come first "
            "(Gemma-style [heads, in, head_dim]), give this leaf its own rule, "
            f"e.g. blocks=BlockRules(rules=[({pattern!r}, "
            "BlockSpec(reduce_axes=(1, 2)))])."
        )
      return (0, 2), None, None
    raise ValueError(
        f"{where}: shape {logical_shape} matched the query/key rule "
        f"{pattern!r}, which knows [in, heads*head_dim] and "
        "[in, heads, head_dim] kernels only. Give it its own rule, e.g. "
        f"blocks=BlockRules(rules=[({pattern!r}, BlockSpec(reduce_axes=...))])."
    )
  raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")


def _example_head_dim(size: int) -> int:
  for candidate in (128, 64, 32, 16, 8):
    if size % candidate == 0 and size > candidate:
      return candidate
  return size


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
    head_dim: int | None = None,
    blocks: BlockRules | None = None,
) -> BlockSpec:
  """The :class:`BlockSpec` the rules give one leaf, and so its blocks.

  Args:
    path: the leaf's key path (from ``jax.tree_util.tree_flatten_with_path``)
      or already-normalised string components.
    leaf: an array or anything with ``.shape``.
    head_dim: size of one attention head, for flat query/key kernels.
    blocks: a :class:`BlockRules`, or ``None`` for the defaults.

  Returns:
    The spec, in the leaf's own axes (stack axes included).

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_mini import block_spec_for
    >>> path = ("layers", "3", "self_attn", "k_proj", "kernel")
    >>> spec = block_spec_for(path, jnp.zeros((64, 32)), head_dim=16)
    >>> spec.role, spec.v_shape((64, 32))  # GQA: two kv heads
    ('heads [k_proj]', (2,))
  """
  rules = blocks if isinstance(blocks, BlockRules) else BlockRules()
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
  return _claim(components, shape, head_dim, rules, where)[0]


def _claim(
    components: tuple[str, ...],
    shape: tuple[int, ...],
    head_dim: int | None,
    rules: BlockRules,
    where: str,
) -> tuple[BlockSpec, int | None]:
  """The leaf's spec and the index (in ``rules.all_rules()``) of the rule
  that claimed it, ``None`` for the fallback; the index lets
  :func:`warn_unclaimed_rules` find user rules that claimed nothing."""
  ndim = len(shape)
  stack = _stack_axes_for(components, ndim, rules.stacked, where)
  logical_to_full = tuple(a for a in range(ndim) if a not in stack)
  logical_shape = tuple(shape[a] for a in logical_to_full)
  nd = len(logical_shape)

  def finish(reduce, head_axis, hd, role):
    lifted_head = None
    if head_axis is not None:
      lifted_head = _lift((head_axis,), logical_to_full, where, shape)[0]
    spec = BlockSpec(
        reduce_axes=_lift(reduce, logical_to_full, where, shape),
        head_axis=lifted_head,
        head_dim=hd,
        stack_axes=stack,
        role=role,
    )
    spec.layout(shape, where)  # validate now: errors name the path
    return spec

  for index, rule in enumerate(rules.all_rules()):
    if not _pattern_matches(rule.pattern, components):
      continue
    target = rule.target
    if isinstance(target, BlockSpec):
      return finish(
          target.reduce_axes, target.head_axis, target.head_dim,
          f"{target.role} [{rule.pattern}]",
      ), index
    role = target
    if role in _KERNEL_ROLES and nd < 2:
      continue
    if role == "value" and rules.value_as_one_block:
      role = "tensor"
      label = f"value as one block [{rule.pattern}]"
    else:
      label = f"{role} [{rule.pattern}]"
    reduce, head_axis, hd = _role_spec(role, logical_shape, head_dim, where, rule.pattern)
    return finish(reduce, head_axis, hd, label), index
  role = "neuron" if nd >= 2 else "tensor"
  reduce, head_axis, hd = _role_spec(role, logical_shape, head_dim, where, "")
  return finish(reduce, head_axis, hd, f"{role} (default)"), None


def check_head_dim(head_dim: Any) -> int | None:
  """Validates ``head_dim``: a positive Python int or ``None``."""
  if head_dim is None:
    return None
  if isinstance(head_dim, bool) or not isinstance(head_dim, (int, np.integer)):
    raise ValueError(
        f"head_dim must be a positive Python int (or None), got {head_dim!r} of "
        f"type {type(head_dim).__name__}. It fixes shapes, so it cannot be a "
        "traced value: under optax.inject_hyperparams pass "
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
      or (isinstance(r, (list, tuple)) and len(r) == 2 and isinstance(r[0], str))
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
    head_dim: int | None = None,
    blocks: Blocks = None,
) -> Any:
  """A pytree of :class:`BlockSpec`, one per leaf of ``params``.

  Args:
    params: the parameter (or gradient) pytree; leaves need only ``.shape``
      (``jax.ShapeDtypeStruct`` works).
    head_dim: size of one attention head, for flat query/key kernels.
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
  specs = _flat_specs(
      tuple(p for p, _ in leaves_with_path),
      tuple(tuple(np.shape(x)) for _, x in leaves_with_path),
      treedef,
      head_dim,
      blocks,
  )
  return jax.tree_util.tree_unflatten(treedef, specs)


def _flat_specs(paths, shapes, treedef, head_dim, blocks) -> list[BlockSpec]:
  head_dim = check_head_dim(head_dim)
  rules = _as_block_rules(blocks)
  if rules is not None:
    return list(_flat_specs_from_rules(paths, shapes, head_dim, rules))
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


def _flat_specs_from_rules(paths, shapes, head_dim, rules) -> tuple[BlockSpec, ...]:
  return tuple(spec for spec, _ in _flat_claims_from_rules(paths, shapes, head_dim, rules))


@functools.lru_cache(maxsize=256)
def _flat_claims_from_rules(paths, shapes, head_dim, rules) -> tuple[tuple[BlockSpec, int | None], ...]:
  return tuple(
      _claim(normalize_path(path), shape, head_dim, rules, path_str(path))
      for path, shape in zip(paths, shapes)
  )


def warn_unclaimed_rules(paths, shapes, head_dim: int | None, blocks: Blocks) -> None:
  """Warns, naming it, about each user rule or ``stacked`` pattern that
  claimed no leaf (usually a typo, or a rule shadowed by an earlier one).

  Called by ``init`` only, so a training loop does not warn on every update
  trace; each (tree, rules) pair warns once. :data:`DEFAULT_RULES` never warn:
  most of them match nothing in any one model.
  """
  rules = _as_block_rules(blocks)
  if rules is None or not (rules.rules or rules.stacked):
    return
  _warn_unclaimed_once(tuple(paths), tuple(tuple(s) for s in shapes), check_head_dim(head_dim), rules)


@functools.lru_cache(maxsize=256)
def _warn_unclaimed_once(paths, shapes, head_dim, rules) -> None:
  # Cached so that the same optimizer init (explain() traces it twice, a
  # notebook cell re-runs it) warns once per rule.
  claimed = {index for _, index in _flat_claims_from_rules(paths, shapes, head_dim, rules)}
  components = [normalize_path(path) for path in paths]
  for index, rule in enumerate(rules.rules):
    if index in claimed:
      continue
    target = rule.target if isinstance(rule.target, str) else "BlockSpec(...)"
    matched = sum(_pattern_matches(rule.pattern, c) for c in components)
    if matched:
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
