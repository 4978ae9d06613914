"""Re-store an Adam-mini state's first moment in another ``mu_dtype``.

A run that started with a float32 ``m`` and needs the memory back (a larger
batch, a larger model on the same device) can continue with
``mu_dtype=jnp.int8`` from its checkpoint; a run with an int8 ``m`` can go
back to float32, or to another code map. :func:`convert_state` does it:
``v`` and the step count are kept as they are, and ``m`` is dequantized (if
it was quantized) and stored the way the new transform's ``init`` stores
it. The update itself refuses a state made with another ``mu_dtype`` (it
names the leaf); this is the way across.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from optax_mini import _flax, _haliax
from optax_mini import blocks as blocks_lib
from optax_mini import quantize as quantize_lib
from optax_mini.transform import ScaleByAdamMiniState, _strip_names

__all__ = ["convert_state"]


def _is_mini(x: Any) -> bool:
  return isinstance(x, ScaleByAdamMiniState)


def _is_moment(x: Any) -> bool:
  return isinstance(x, quantize_lib.QuantizedMoment)


@functools.partial(jax.jit, static_argnames=("code", "dtype"))
def _restore(mu: Any, *, code: str | None, dtype: Any) -> Any:
  """One leaf's ``m`` as float32 (dequantized if it is quantized), then
  quantized with ``code`` (nearest rounding) or cast to ``dtype``."""
  if _is_moment(mu):
    m = quantize_lib.dequantize(mu)
  else:
    m = mu if jnp.iscomplexobj(mu) else mu.astype(jnp.float32)
  if code is not None:
    return quantize_lib.quantize(m, code)
  return m.astype(dtype)


def _shapes(x: Any) -> tuple[Any, ...]:
  return tuple((tuple(leaf.shape), jnp.dtype(leaf.dtype)) for leaf in jax.tree.leaves(x))


def _convert_mini(source: ScaleByAdamMiniState, target: ScaleByAdamMiniState) -> ScaleByAdamMiniState:
  # haliax: moments are matched without their NamedArrays (an int8 m's
  # scales are named otherwise than a float m), and named as tx names them.
  mu_paths, mu_def = jax.tree_util.tree_flatten_with_path(_strip_names(target.mu), is_leaf=_is_moment)
  nu_paths, nu_def = jax.tree_util.tree_flatten_with_path(_strip_names(target.nu))
  try:
    source_mu = mu_def.flatten_up_to(_strip_names(source.mu))
    source_nu = nu_def.flatten_up_to(_strip_names(source.nu))
  except (ValueError, TypeError) as err:
    raise ValueError(
        "convert_state: the state's moments have another tree structure than "
        f"tx.init(params)'s ({err}). Pass the parameters the state was made for."
    ) from None
  # m has each parameter's shape: a mismatch means other parameters, checked
  # before v, whose shapes also follow the partition.
  for (path, want), got in zip(mu_paths, source_mu, strict=True):
    got_shape = tuple((got.codes if _is_moment(got) else got).shape)
    want_shape = tuple((want.codes if _is_moment(want) else want).shape)
    if got_shape != want_shape:
      raise ValueError(
          f"convert_state: {blocks_lib.path_str(path)}: the state's m has shape {got_shape}, "
          f"the parameter {want_shape}. Pass the parameters the state was made for."
      )
  for (path, want), got in zip(nu_paths, source_nu, strict=True):
    if tuple(got.shape) != tuple(want.shape):
      raise ValueError(
          f"convert_state: {blocks_lib.path_str(path)}: the state's v has shape "
          f"{tuple(got.shape)}, the new transform's {tuple(want.shape)}: they partition the "
          "parameters differently (head_dim or blocks=). Converting m cannot fix that; use "
          "the head_dim/blocks that made the state."
      )
  mu = []
  for (path, want), got in zip(mu_paths, source_mu, strict=True):
    if _is_moment(want):
      new = _restore(got, code=want.code, dtype=None)
    else:
      new = _restore(got, code=None, dtype=jnp.dtype(want.dtype))
    if _shapes(new) != _shapes(want):  # a layout this function does not know
      raise ValueError(
          f"convert_state: {blocks_lib.path_str(path)}: converted m has arrays "
          f"{_shapes(new)}, tx.init(params) has {_shapes(want)}."
      )
    mu.append(new)
  return ScaleByAdamMiniState(
      count=source.count, mu=_haliax.like(target.mu, mu_def.unflatten(mu)), nu=source.nu
  )


def convert_state(state: Any, tx: optax.GradientTransformation, params: Any) -> Any:
  """``state`` as ``tx`` would hold it: its first moment re-stored in ``tx``'s
  ``mu_dtype`` and ``mu_code``; ``v``, the step count and every other part
  of the state kept.

  For a run that switches ``mu_dtype`` (float32 to int8 to free memory, int8
  back to float32, or another code map). ``m`` is dequantized if it was
  quantized, then quantized (nearest rounding, per block of the last axis as
  the update does) or cast, leaf by leaf; no full-size float32 copy outlives
  its leaf. A float32 ``m`` converted to int8 and back differs from the
  original by the code map's rounding (for the power map at most
  ``1 - (126.5 / 127) ** 4``, 1.6 %, of its block's maximum).

  Args:
    state: the state to convert, from a transform containing
      :func:`~optax_mini.scale_by_adam_mini` (``adam_mini``, or a chain,
      ``optax.inject_hyperparams``, ``optax.MultiSteps`` ... around it) with
      any ``mu_dtype`` and ``mu_code``.
    tx: the transform that will continue from it: the same chain, with
      another ``mu_dtype``/``mu_code``. Its partition (``head_dim``,
      ``blocks``) must be the state's: ``v`` is kept as it is.
    params: the parameters, or their shapes (``jax.ShapeDtypeStruct``).

  Returns:
    A state with the structure of ``tx.init(params)``, as arrays. Flax NNX
    variables in ``state`` or ``params`` (an ``nnx.Optimizer``'s
    ``opt_state``, ``nnx.state(model, nnx.Param)``) are read as their
    arrays; put the result into an optimizer made with ``tx``::

      new = nnx.Optimizer(model, tx, wrt=nnx.Param)
      converted = optax_mini.convert_state(old.opt_state, tx, nnx.state(model, nnx.Param))
      nnx.update(new.opt_state, nnx.state(converted))
      new.step[...] = old.step[...]

  Raises:
    ValueError: if ``state`` holds no Adam-mini state, is structured
      otherwise than ``tx.init(params)``, or partitions the parameters
      otherwise (``v``'s shapes), naming the leaf.

  Example:
    >>> import jax.numpy as jnp, optax_mini
    >>> params = {"mlp": {"kernel": jnp.ones((64, 256))}}
    >>> old = optax_mini.adam_mini(1e-3)
    >>> state = old.init(params)
    >>> new = optax_mini.adam_mini(1e-3, mu_dtype=jnp.int8)
    >>> state = optax_mini.convert_state(state, new, params)
    >>> type(state[0].mu["mlp"]["kernel"]).__name__
    'QuantizedMoment'
    >>> updates, state = new.update(params, state, params)
  """
  state, params = _flax.as_arrays(state), _flax.as_arrays(params)
  target = jax.eval_shape(tx.init, params)
  source_nodes, source_def = jax.tree.flatten(state, is_leaf=_is_mini)
  target_nodes, target_def = jax.tree.flatten(target, is_leaf=_is_mini)
  if not any(_is_mini(node) for node in target_nodes):
    raise ValueError(
        "convert_state: tx holds no Adam-mini state (ScaleByAdamMiniState); pass the "
        "transform that will continue from the state."
    )
  if source_def != target_def:
    raise ValueError(
        "convert_state: the state is structured otherwise than tx.init(params): "
        f"{source_def} against {target_def}. Pass the same chain of transforms, with "
        "only mu_dtype/mu_code changed."
    )
  out = []
  for source, target_node in zip(source_nodes, target_nodes, strict=True):
    out.append(_convert_mini(source, target_node) if _is_mini(target_node) else source)
  return source_def.unflatten(out)
