"""optax_mini: Adam-mini for JAX, as an Optax ``GradientTransformation``.

Adam-mini (Zhang et al., ICLR 2025) keeps Adam's first moment but only one
second moment per block of parameters (per attention head, per token, per
output neuron, per norm tensor), which halves the optimizer state.

>>> import optax_mini
>>> tx = optax_mini.adam_mini(learning_rate=1e-3, head_dim=64)
"""

from optax_mini import quantize
from optax_mini._penzai import penzai_blocks
from optax_mini.alias import adam_mini, default_weight_decay_mask
from optax_mini.blocks import (
    DEFAULT_RULES,
    PART_ROLES,
    ROLES,
    BlockRules,
    BlockSpec,
    Layout,
    Part,
    Rule,
    block_spec_for,
    block_specs,
    normalize_path,
)
from optax_mini.convert import convert_state
from optax_mini.explain import BlockRow, PartitionReport, explain, state_bytes
from optax_mini.sharding import abstract_state, state_shardings
from optax_mini.transform import ScaleByAdamMiniState, scale_by_adam_mini

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_RULES",
    "PART_ROLES",
    "ROLES",
    "BlockRow",
    "BlockRules",
    "BlockSpec",
    "Layout",
    "Part",
    "PartitionReport",
    "Rule",
    "ScaleByAdamMiniState",
    "abstract_state",
    "adam_mini",
    "block_spec_for",
    "block_specs",
    "convert_state",
    "default_weight_decay_mask",
    "explain",
    "normalize_path",
    "penzai_blocks",
    "quantize",
    "scale_by_adam_mini",
    "state_bytes",
    "state_shardings",
]
