"""A long run on a quadratic whose optimum is known, for stability tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def quadratic_run(tx, steps, shapes, seed=3):
  """Minimises a quadratic with a known optimum (``target``) for ``steps``
  steps of ``tx`` in one scan: ``(params, state, losses, target, loss)``."""
  rng = np.random.default_rng(seed)
  target = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                        is_leaf=lambda x: isinstance(x, tuple))
  # Curvatures spread over two decades inside every block.
  curvature = jax.tree.map(lambda t: jnp.asarray(10 ** rng.uniform(-1, 1, size=t.shape), jnp.float32), target)

  def loss(p):
    terms = jax.tree.map(lambda x, t, h: 0.5 * jnp.sum(h * (x - t) ** 2), p, target, curvature)
    return sum(jax.tree.leaves(terms))

  def step(carry, _):
    params, state = carry
    value, grads = jax.value_and_grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), value

  params = jax.tree.map(jnp.zeros_like, target)
  state = tx.init(params)
  (params, state), losses = jax.jit(lambda c: jax.lax.scan(step, c, length=steps))((params, state))
  return params, state, np.asarray(losses), target, loss
