"""The model and optimizer shared by the two-process test and its workers."""

from __future__ import annotations

import numpy as np
import optax
from jax.sharding import PartitionSpec as P

import optax_mini

HEAD_DIM = 4
STEPS = 3
LAYOUT = {
    "embed_tokens": {"embedding": ((64, 16), P("fsdp", "tp"))},
    "self_attn": {
        "q_proj": {"kernel": ((16, 32), P("fsdp", "tp"))},
        "k_proj": {"kernel": ((16, 16), P("fsdp", "tp"))},
        "v_proj": {"kernel": ((16, 16), P("fsdp", "tp"))},
        "o_proj": {"kernel": ((32, 16), P("tp", "fsdp"))},
    },
    "mlp": {"up_proj": {"kernel": ((16, 48), P("fsdp", "tp"))}},
    "norm": {"scale": ((16,), P("fsdp"))},
    "lm_head": {"kernel": ((16, 64), P("fsdp", "tp"))},
}


def _is_entry(x):
  return isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], P)


def host_tree(seed):
  rng = np.random.default_rng(seed)
  return {k: _map(v, rng) for k, v in LAYOUT.items()}


def _map(node, rng):
  if _is_entry(node):
    return rng.normal(size=node[0]).astype(np.float32)
  return {k: _map(v, rng) for k, v in node.items()}


def specs():
  def spec_of(node):
    return node[1] if _is_entry(node) else {k: spec_of(v) for k, v in node.items()}

  return spec_of(LAYOUT)


def make_tx():
  return optax.chain(optax.clip_by_global_norm(1.0), optax_mini.adam_mini(1e-2, b2=0.95, weight_decay=0.1, head_dim=HEAD_DIM))


def apply(tx, params, state, grads):
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state
