"""Penzai interop: paths from parameter labels, blocks from the model's layers.

Penzai's trainer (``penzai.toolshed.basic_training``) hands the optimizer
``pz.freeze_params(params)``: a tuple of ``ParameterValue`` s whose label
(``"transformer/block_0/attention/query.weights"``) and axis names are
static, so every leaf's key path is only ``[i].value.data_array``. Its
``NamedArray`` s keep their axes in whatever order the model was built or
loaded in: ``pz.nn.Linear.from_config`` stores ``[in..., out...]``, penzai's
Hugging Face loaders keep PyTorch's ``[out, in]``, its Gemma loader the
checkpoint's heads-first einsums, and a ``LayerStack``'s axis is first in one
and last in another. Which axes a layer contracts is known only to the layer
(``Linear.in_axis_names``), not to the parameter.

So the partition is read from the model: :func:`penzai_blocks` walks its
layers and gives every parameter an exact rule keyed by its label, and the
leaves of a penzai tree are named by their labels (:func:`leaf_info`). A
leaf of two or more axes that no such exact rule claims raises (see
``blocks._check_penzai_claim``) instead of being read by position.

Nothing here imports penzai unless :func:`penzai_blocks` is called: a tree can
hold its values only if the user imported it, so ``sys.modules`` is asked.
"""

from __future__ import annotations

import collections
import re
import sys
from typing import Any

import jax

from optax_mini import _haliax, _named

#: The ``AxisNames.source`` of a penzai leaf.
SOURCE = "penzai"


def _named_axes() -> Any:
  return sys.modules.get("penzai.core.named_axes")


def _variables() -> Any:
  return sys.modules.get("penzai.core.variables")


def _is_named(x: Any) -> bool:
  module = _named_axes()
  return module is not None and isinstance(x, module.NamedArrayBase)


def _is_labeled(x: Any) -> bool:
  module = _variables()
  return module is not None and isinstance(x, module.LabeledVariableValue)


def data_axis_names(x: Any) -> tuple[str, ...]:
  """The name of each axis of a penzai ``NamedArray`` 's (or
  ``NamedArrayView`` 's) data array, in the array's order; ``""`` for a
  positional axis."""
  if hasattr(x, "named_axes"):  # NamedArray: positional axes, then named ones
    named = tuple(str(n) for n in x.named_axes)
    ndim = len(x.data_array.shape)
    return ("",) * (ndim - len(named)) + named
  names = [""] * len(x.data_shape)
  for name, axis in x.data_axis_for_name.items():
    names[axis] = str(name)
  return tuple(names)


def label_components(label: str) -> tuple[str, ...]:
  """A penzai label as path components, as :func:`optax_mini.normalize_path`
  reads a key ``DictKey(label)``: split at ``/`` and ``.``, lower-cased."""
  return tuple(c.lower() for c in str(label).replace(".", "/").split("/") if c)


def leaf_info(tree: Any, paths: tuple[Any, ...]) -> tuple[tuple[Any, ...], tuple[Any, ...]] | None:
  """Each leaf's key path with penzai's labels put in, and its
  :class:`~optax_mini._haliax.AxisNames` (``None`` for a leaf that is not a
  penzai value); ``None`` if ``tree`` holds no penzai value.

  A ``ParameterValue`` 's leaf is named by its label alone
  (``DictKey(label)``: labels are unique in a model), a ``NamedArray`` 's by
  the path to it (its ``data_array`` dropped), so ``{label: NamedArray}``
  (penzai's older trainer) and ``pz.freeze_params(params)`` read the same.
  """
  if _named_axes() is None and _variables() is None:
    return None
  is_node = lambda x: _is_labeled(x) or _is_named(x)  # noqa: E731
  nodes = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_node)[0]
  if not any(is_node(x) for _, x in nodes):
    return None
  out_paths: list[Any] = []
  names: list[Any] = []
  for path, node in nodes:
    if not is_node(node):
      out_paths.append(tuple(path))
      names.append(None)
      continue
    base, inner = tuple(path), node
    if _is_labeled(node):
      base, inner = (jax.tree_util.DictKey(node.label),), node.value
    subs = jax.tree_util.tree_flatten_with_path(inner)[0]
    for sub, _ in subs:
      out_paths.append(base if len(subs) == 1 else base + tuple(sub))
      if _is_named(inner) and len(subs) == 1:
        axes = data_axis_names(inner)
        names.append(_haliax.AxisNames(axes, (_haliax.UNKNOWN,) * len(axes), "", SOURCE))
      else:
        names.append(None)
  if len(out_paths) != len(paths):  # not the tree whose leaves were given
    return None
  return tuple(out_paths), tuple(names)


# ----------------------------------------------------------------------------
# The model's layers -> exact rules


def _escape(component: str) -> str:
  return re.sub(r"([*?\[])", r"[\1]", component)


def _parameter(variable: Any, where: str) -> tuple[str, Any]:
  """A layer's parameter as ``(label, value)``; raises for an unbound slot."""
  label = getattr(variable, "label", None)
  try:
    value = getattr(variable, "value", None)
  except Exception:  # noqa: BLE001 (a ParameterSlot raises its own error on .value)
    value = None
  if label is None or value is None or not _is_named(value):
    raise ValueError(
        f"optax_mini.penzai_blocks: {where} holds {type(variable).__name__} "
        f"{label!r}, not a parameter with a NamedArray value: pass the model with its "
        "parameters bound (the model StatefulTrainer.build is given, or "
        "pz.bind_variables(unbound_model, params)), not the unbound model."
    )
  return str(label), value


def _adapter_labels(layer: Any) -> frozenset[str]:
  """The weights' labels of the LoRA factors in ``layer``: the Linears of a
  ``penzai.toolshed.lora.LowRankAdapter``'s ``Update`` group (``LoRA_A``
  maps the adapted Linear's inputs to the rank, ``LoRA_B`` the rank to its
  outputs). Under a query or key they are no query/key kernel: B's outputs
  are the query's heads and head sizes, each a neuron of its own."""
  from penzai import pz  # noqa: PLC0415 (penzai_blocks' caller imported it)

  lora = sys.modules.get("penzai.toolshed.lora")
  if lora is None:
    return frozenset()
  labels = set()
  for adapter in pz.select(layer).at_instances_of(lora.LowRankAdapter).get_sequence():
    for group in pz.select(adapter).at_instances_of(pz.nn.NamedGroup).get_sequence():
      if group.name == "Update":
        for linear in pz.select(group).at_instances_of(pz.nn.Linear).get_sequence():
          labels.add(_parameter(linear.weights, "a LoRA adapter's Linear")[0])
  return frozenset(labels)


def penzai_blocks(model: Any, *, rules: Any = (), stacked: Any = (), **options: Any) -> Any:
  """Exact :class:`~optax_mini.BlockRules` for a penzai model's parameters.

  Penzai keeps a parameter's axes in the order its model was built or loaded
  in, and only its layers say which of them they contract, so the blocks are
  read from the model: for every ``pz.nn.Linear``, its ``in_axis_names`` are
  averaged; inside an attention layer's ``input_to_query`` /
  ``input_to_key`` one ``v`` per head (its outputs less the axes the
  query-key einsum contracts, a head's size), inside ``input_to_value`` one
  per output neuron (or one block, ``value_as_one_block``), and elsewhere
  (attention output, MLP, ``lm_head``) one per output neuron. A
  ``Linear`` with only parallel axes (a norm's scale) is one block, an
  ``EmbeddingTable`` one ``v`` per entry of its vocabulary axis, an
  ``AddBias`` one per element; the axes of every ``LayerStack`` are layer
  axes, and any other parallel axis of a ``Linear`` (a block-diagonal
  weight) is kept.

  Each parameter gets one rule keyed by its label, so the rules apply to
  ``pz.freeze_params(params)`` (what ``basic_training.StatefulTrainer``
  passes), to any subset of it (frozen parameters), and to
  ``{label: NamedArray}``. A parameter of two or more axes that the walk
  does not reach (a layer of another kind) has no rule, and raises at
  ``init`` saying so: give it one in ``rules``.

  Args:
    model: the penzai model, its parameters bound (``Parameter`` or
      ``ParameterValue``; not ``ParameterSlot``).
    rules: further rules, tried before the model's.
    stacked: further layer-stack patterns, tried before the model's.
    **options: other :class:`~optax_mini.BlockRules` fields
      (``value_as_one_block``, ``query_key_per_neuron``, ...).

  Returns:
    A :class:`~optax_mini.BlockRules` to pass as ``blocks=``.

  Raises:
    ValueError: if a parameter is unbound, one label is given two readings,
      or a query/key layer's heads cannot be told from a head's size.

  Example (with penzai installed):
    >>> import jax, optax_mini
    >>> from penzai import pz
    >>> lin = pz.nn.Linear.from_config("up", jax.random.key(0),
    ...     input_axes={"embedding": 8}, output_axes={"neurons": 16})
    >>> blocks = optax_mini.penzai_blocks(lin)
    >>> params = pz.freeze_params(pz.unbind_params(lin)[1])
    >>> report = optax_mini.explain(params, blocks=blocks)
    >>> [(r.path, r.v_shape) for r in report.rows]
    [("['up.weights']", (16,))]
  """
  from penzai import pz  # noqa: PLC0415 (only penzai users call this)

  from optax_mini import blocks as blocks_lib  # noqa: PLC0415 (a cycle otherwise)

  select = pz.select(model)
  stack_names = {
      str(stack.stack_axis) for stack in select.at_instances_of(pz.nn.LayerStack).get_sequence()
  }
  # label -> (role, layout letters by data axis ("" for a stack axis), data axes).
  readings: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {}

  def read(label: str, role: str, letters: tuple[str, ...], axes: tuple[str, ...]) -> None:
    if readings.get(label, (role, letters, axes)) != (role, letters, axes):
      raise ValueError(
          f"optax_mini.penzai_blocks: parameter {label!r} (axes {axes}) is used by two "
          f"layers that read it differently: as {readings[label][0]} "
          f"{' '.join(readings[label][1])!r} and as {role} {' '.join(letters)!r}. Give it "
          "a rule of its own: penzai_blocks(model, rules=[Rule(<its label's path>, ...)])."
      )
    readings[label] = (role, letters, axes)

  query_key: dict[str, frozenset[str]] = {}  # label -> a head's size axes
  values: set[str] = set()
  attentions = select.at_subtrees_where(
      lambda x: isinstance(x, pz.nn.Layer) and all(
          hasattr(x, f) for f in ("input_to_query", "input_to_key", "input_to_value",
                                  "query_key_to_attn"))
  ).get_sequence()
  for attention in attentions:
    head_size: set[str] = set()
    for einsum in pz.select(attention.query_key_to_attn).at_instances_of(
        pz.nn.NamedEinsum).get_sequence():
      if len(einsum.input_axes) == 2:
        first, second = (set(axes) for axes in einsum.input_axes)
        head_size |= (first & second) - set(einsum.output_axes)
    adapters = _adapter_labels(attention)
    for sub in (attention.input_to_query, attention.input_to_key):
      for linear in pz.select(sub).at_instances_of(pz.nn.Linear).get_sequence():
        label, _ = _parameter(linear.weights, "an attention's query/key Linear")
        if label in adapters:
          continue  # a LoRA factor: one v per output neuron, as any Linear
        if not head_size:
          raise ValueError(
              f"optax_mini.penzai_blocks: {label!r} is a query/key weight, but its attention "
              "layer's query_key_to_attn has no two-input NamedEinsum whose contracted axes "
              "would say which output axes are a head's size, so its heads are a guess. "
              "Give it a rule: penzai_blocks(model, rules=[Rule(<label path>, 'heads', "
              "layout=<one letter per axis: i input, n heads, h head size>)])."
          )
        query_key[label] = frozenset(head_size)
    for linear in pz.select(attention.input_to_value).at_instances_of(pz.nn.Linear).get_sequence():
      label = _parameter(linear.weights, "an attention's value Linear")[0]
      if label not in adapters:
        values.add(label)

  for linear in select.at_instances_of(pz.nn.Linear).get_sequence():
    label, value = _parameter(linear.weights, "a Linear")
    axes = data_axis_names(value)
    inputs, outputs = set(linear.in_axis_names), set(linear.out_axis_names)
    if not inputs and not outputs:  # a norm's scale: parallel axes only
      read(label, "tensor", tuple("" if a in stack_names else "i" for a in axes), axes)
      continue
    role = "heads" if label in query_key else "value" if label in values else "neuron"
    letters = []
    for name in axes:
      if name in stack_names:
        letters.append("")
      elif name in inputs:
        letters.append("i")
      elif name in outputs:
        letters.append("h" if name in query_key.get(label, ()) else "n" if role == "heads" else "o")
      else:  # a parallel axis: a separate operator per entry, like an expert
        letters.append("e")
    read(label, role, tuple(letters), axes)
  for table in select.at_instances_of(pz.nn.EmbeddingTable).get_sequence():
    label, value = _parameter(table.embeddings, "an EmbeddingTable")
    axes = data_axis_names(value)
    vocabulary = str(table.vocabulary_axis)
    letters = tuple("" if a in stack_names else "o" if a == vocabulary else "i" for a in axes)
    read(label, "token", letters, axes)
  for bias in select.at_instances_of(pz.nn.AddBias).get_sequence():
    label, value = _parameter(bias.bias, "an AddBias")
    axes = data_axis_names(value)
    read(label, "element", tuple("" if a in stack_names else "o" for a in axes), axes)

  patterns: dict[tuple[str, ...], str] = {}
  made, stacks = [], []
  for label in sorted(readings, key=lambda s: (-len(label_components(s)), s)):
    role, letters, axes = readings[label]
    components = label_components(label)
    if components in patterns:
      raise ValueError(
          f"optax_mini.penzai_blocks: labels {patterns[components]!r} and {label!r} name "
          "the same path once split at '/' and '.'; rename one of them."
      )
    patterns[components] = label
    pattern = "/".join(_escape(c) for c in components)
    layer_axes = tuple(a for a, letter in enumerate(letters) if not letter)
    if layer_axes:
      stacks.append((pattern, layer_axes))
    kept = [letter for letter in letters if letter]
    layout = " ".join(kept) if role in blocks_lib._KERNEL_ROLES and len(kept) >= 2 else None
    if role in blocks_lib._KERNEL_ROLES and len(kept) < 2:
      role = "element" if "o" in kept else "tensor"  # a one-axis "kernel": nothing to average
    made.append(blocks_lib._ModelRule(pattern, role, layout))
  user = blocks_lib.BlockRules(rules=rules, stacked=stacked)
  return blocks_lib.BlockRules(
      rules=user.rules + tuple(made), stacked=user.stacked + tuple(stacks), **options
  )


# ----------------------------------------------------------------------------
# The state: v named by the axes it keeps


def strip(tree: Any) -> Any:
  """``tree`` with each penzai ``NamedArray`` (or view) replaced by its data
  array: the state's ``v`` is named by other axes than its parameter's
  (:func:`describe_state`), so the update matches state to gradients
  without the names."""
  if _named_axes() is None:
    return tree
  return jax.tree_util.tree_map(
      lambda x: x.data_array if _is_named(x) else x, tree, is_leaf=_is_named
  )


def describe_state(params: Any, tree: Any, v_axes: Any = None) -> Any:
  """``tree`` (one state entry per leaf of ``params``, in the structure of
  ``strip(params)``) with each entry of a penzai ``NamedArray`` parameter
  named again: ``m`` (``v_axes=None``; an int8 ``m`` 's codes and scales
  together) as its parameter, ``v`` by the parameter axes it keeps
  (``v_axes[i]``, with ``v`` 's sizes), so that penzai's name-based sharding
  (``pz.nx`` / ``sharding_util``) reads every array of the state as it is.
  A ``v`` that keeps a positional axis, or whose parameter is a view, is
  left a plain array. Trees without penzai values are returned as they are.
  """
  module = _named_axes()
  if module is None:
    return tree

  def name(array: Any, index: int, entry: Any) -> Any:
    if array.data_array is None:
      return entry
    if v_axes is None:  # the parameter's own names: its node, holding the entry
      node = jax.tree_util.tree_structure(array, is_leaf=lambda x: x is not array)
      return node.unflatten([entry])
    if not hasattr(array, "named_axes"):
      return entry
    names = data_axis_names(array)
    kept = [names[a] for a in v_axes[index]]
    if "" in kept:
      return entry
    return module.NamedArray(named_axes=_ordered(zip(kept, entry.shape)), data_array=entry)

  return _named.name_entries(params, tree, _is_named, lambda x: x, name)


def _ordered(items: Any) -> Any:
  return collections.OrderedDict((str(k), int(v)) for k, v in items)
