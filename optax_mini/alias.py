"""``adam_mini``: the drop-in replacement for ``optax.adamw``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Union

import jax
import optax

from optax_mini import blocks as blocks_lib
from optax_mini import quantize, transform

__all__ = ["adam_mini", "default_weight_decay_mask"]


def default_weight_decay_mask(
    params: Any, *, head_dim: blocks_lib.HeadDim = None, blocks: blocks_lib.Blocks = None
) -> Any:
  """Decay kernels and embeddings; not biases, norm scales or scalars.

  The official package's choice (no decay on ``norm``/``ln``/``bias`` names;
  embeddings and ``lm_head`` decayed), expressed on shapes plus the bias
  name: a leaf is decayed when it has two or more axes and neither its name
  nor its module's is a bias's (``bias``, ``*_bias``, Haiku's ``b``; so
  ``[heads, head_dim]`` attention biases are not decayed), nor is it an
  ``<x>_b`` beside an ``<x>_w`` (AlphaFold's ``gating_b``). Layer-stack axes declared in ``blocks`` (``BlockRules(stacked=)``)
  do not count: a scanned ``[layers, dim]`` norm scale is not decayed; nor is
  a norm's scale of several axes (a tensor-parallel or multi-head norm's
  ``[shards, heads, head_dim]``: a scale's name under a norm module).

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_mini import default_weight_decay_mask
    >>> default_weight_decay_mask({"kernel": jnp.ones((2, 3)), "scale": jnp.ones(3),
    ...                            "bias": jnp.ones((2, 3))})
    {'bias': False, 'kernel': True, 'scale': False}
  """
  specs = blocks_lib.block_specs(params, head_dim=head_dim, blocks=blocks)
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths, _ = blocks_lib.leaf_paths(params, tuple(p for p, _ in leaves_with_path))
  decay = []
  paired = blocks_lib.paired_biases([blocks_lib.normalize_path(path) for path in paths])
  for path, (_, leaf), spec in zip(paths, leaves_with_path, treedef.flatten_up_to(specs)):
    components = blocks_lib.normalize_path(path)
    biased = blocks_lib.is_bias(components) or components in paired
    kept = not biased and not blocks_lib.is_norm_scale(components)
    decay.append(len(getattr(leaf, "shape", ())) - len(spec.stack_axes) >= 2 and kept)
  return treedef.unflatten(decay)


def adam_mini(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    mask: Union[Any, Callable[[optax.Params], Any]] | None = None,
    *,
    head_dim: blocks_lib.HeadDim = None,
    mu_dtype: Any | None = None,
    blocks: blocks_lib.Blocks = None,
    partition_specs: Any = None,
    mu_code: str = quantize.DEFAULT_CODE,
) -> optax.GradientTransformationExtraArgs:
  r"""Adam-mini: AdamW with one second moment per block of parameters.

  Same arguments and meaning as :func:`optax.adamw`, and the same update except
  that :math:`v` is averaged over blocks (one per attention head for
  query/key, per token for embeddings, per output neuron for value, attention
  out, MLP and ``lm_head`` kernels, one per tensor for norm scales; biases keep
  plain Adam). That halves the optimizer state:

  .. math::

    \theta_t = \theta_{t-1} - \alpha_t \left(
      \frac{\hat m_{t,i}}{\sqrt{\hat v_{t,B(i)} + \bar\varepsilon} + \varepsilon}
      + \lambda \theta_{t-1} \right)

  Args:
    learning_rate: a scalar or a schedule.
    b1: decay rate of the first moment.
    b2: decay rate of the per-block second moment.
    eps: added to the denominator outside the square root.
    eps_root: added inside the square root.
    weight_decay: decoupled weight decay, a scalar or a schedule.
    mask: which leaves are decayed, a pytree of bools or a function of the
      params, exactly as in :func:`optax.adamw`. ``None`` (default): leaves
      with two or more axes, not counting layer-stack axes
      (:func:`default_weight_decay_mask`), as the official implementation does.
    head_dim: size of one attention head, needed for flat
      ``[in, heads*head_dim]`` query/key kernels; for a model whose towers
      have heads of different sizes, a mapping from path patterns to sizes,
      ``{"vision_encoder": 72, "decoder": 128}`` (first match wins; a leaf
      none matches has no head size). Static: under
      ``optax.inject_hyperparams`` pass ``static_args=('head_dim',)``.
    mu_dtype: dtype of the first moment (``None``: the parameters' dtype).
      ``jnp.bfloat16`` quarters the state of float32 AdamW; ``jnp.int8``
      stores it block-quantized, for about an eighth
      (:mod:`optax_mini.quantize`). As with ``optax.adam``, under
      ``optax.inject_hyperparams`` a dtype must be static:
      ``static_args=('head_dim', 'mu_dtype')``.
    blocks: partition overrides: a :class:`~optax_mini.BlockRules` (which
      also carries ``num_heads``/``num_kv_heads`` where shapes cannot settle
      a layout), a list of ``(pattern, role_or_spec)`` rules, or a pytree of
      :class:`~optax_mini.BlockSpec`. Check the result with
      :func:`optax_mini.explain`.
    partition_specs: only inside ``shard_map`` with sharded parameters: their
      ``PartitionSpec`` pytree, so that blocks spanning shards take the global
      mean (see :func:`optax_mini.scale_by_adam_mini`).
    mu_code: with ``mu_dtype=jnp.int8``, the code map (``"power"``, the
      default, ``"dynamic"`` or ``"linear"``; see
      :func:`optax_mini.scale_by_adam_mini`).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import optax_mini
    >>> params = {"q_proj": {"kernel": jnp.ones((8, 8))}, "norm": {"scale": jnp.ones(8)}}
    >>> tx = optax_mini.adam_mini(learning_rate=1e-3, head_dim=4)
    >>> state = tx.init(params)
    >>> loss = lambda p: jnp.sum(p["q_proj"]["kernel"] ** 2) + jnp.sum(p["norm"]["scale"])
    >>> grads = jax.grad(loss)(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)

  References:
    Zhang et al., `Adam-mini: Use Fewer Learning Rates To Gain More
    <https://arxiv.org/abs/2406.16793>`_, ICLR 2025.
  """
  transform.check_hyperparameter("learning_rate", learning_rate, allow_callable=True)
  transform.check_hyperparameter("weight_decay", weight_decay, low=0.0)
  if mask is None:
    mask = functools.partial(default_weight_decay_mask, head_dim=head_dim, blocks=blocks)
  return optax.chain(
      transform.scale_by_adam_mini(
          b1=b1,
          b2=b2,
          eps=eps,
          eps_root=eps_root,
          mu_dtype=mu_dtype,
          head_dim=head_dim,
          blocks=blocks,
          partition_specs=partition_specs,
          mu_code=mu_code,
      ),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )
