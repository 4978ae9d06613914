"""The optax contract for ``optax_mini.adam_mini``.

Modelled on optax's generic optimizer tests (``optax/contrib/_common_test.py``):
extra update arguments, no recompilation, ``optax.tree.map_params``,
convergence on the same four targets (with unnamed tuple/list trees),
``inject_hyperparams``, dtype preservation, ``MultiSteps``, state stability
under ``lax.cond``, learning-rate schedules, ``mu_dtype``, abstract init and the
weight-decay mask. Where a reference exists it is ``optax.adamw`` on a tree
where every Adam-mini block is a single element, never the code under test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax._src import test_utils

import optax_mini

# ---------------------------------------------------------------------------
# Targets (the four of optax/contrib/_common_test.py)


def _setup_parabola(dtype):
  initial_params = jnp.array([-1.0, 10.0, 1.0], dtype=dtype)
  final_params = jnp.array([1.0, -1.0, 1.0], dtype=dtype)

  def obj_fn(params):
    return jnp.sum((params - final_params) ** 2)

  return initial_params, final_params, obj_fn


def _setup_rosenbrock(dtype):
  a, b = 1.0, 100.0
  initial_params = jnp.array([0.0, 0.0], dtype=dtype)
  final_params = jnp.array([a, a**2], dtype=dtype)

  def obj_fn(params):
    return (a - params[0]) ** 2 + b * (params[1] - params[0] ** 2) ** 2

  return initial_params, final_params, obj_fn


def _setup_matrix_parabola(dtype):
  initial_params = jnp.zeros((2, 2), dtype=dtype)
  final_params = jnp.array([[3.0, -2.0], [1.0, 4.0]], dtype=dtype)

  def obj_fn(params):
    return jnp.sum((params - final_params) ** 2)

  return initial_params, final_params, obj_fn


def _setup_mixed_tensor_target(dtype):
  initial_params = (jnp.zeros((3,), dtype=dtype), jnp.zeros((2, 2), dtype=dtype))
  final_params = (
      jnp.array([1.0, -1.0, 2.0], dtype=dtype),
      jnp.array([[1.0, 0.0], [-1.0, 1.0]], dtype=dtype),
  )

  def obj_fn(params):
    params_1d, params_2d = params
    return jnp.sum((params_1d - final_params[0]) ** 2) + jnp.sum(
        (params_2d - final_params[1]) ** 2
    )

  return initial_params, final_params, obj_fn


def _as_list_tree(setup):
  """The same target with its parameters in an unnamed list."""

  def wrapped(dtype):
    initial, final, obj_fn = setup(dtype)
    if isinstance(initial, tuple):
      return list(initial), list(final), lambda p: obj_fn(tuple(p))
    return [initial], [final], lambda p: obj_fn(p[0])

  wrapped.__name__ = f"{setup.__name__}_in_list"
  return wrapped


_TARGETS = (
    _setup_parabola,
    _setup_rosenbrock,
    _setup_matrix_parabola,
    _setup_mixed_tensor_target,
)
_ALL_TARGETS = _TARGETS + tuple(_as_list_tree(t) for t in _TARGETS)


def _tree_dtypes_shapes(tree):
  return jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), tree)


# Parameters with a name-derived partition: flat q kernel (needs head_dim),
# embedding, MLP kernel, norm scale, bias.
def _named_params(dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(0), 5)
  return {
      "embed_tokens": {"embedding": jax.random.normal(keys[0], (6, 8), dtype)},
      "q_proj": {"kernel": jax.random.normal(keys[1], (8, 8), dtype)},
      "mlp": {
          "kernel": jax.random.normal(keys[2], (8, 3), dtype),
          "bias": jax.random.normal(keys[3], (3,), dtype),
      },
      "norm": {"scale": jax.random.normal(keys[4], (8,), dtype)},
  }


def _sum_of_squares(params):
  return sum(jnp.sum(x.astype(jnp.float32) ** 2) for x in jax.tree.leaves(params))


def _named_objective(params):
  return sum(jnp.sum(jnp.sin(x.astype(jnp.float32)) * x) for x in jax.tree.leaves(params))


# ---------------------------------------------------------------------------
# Extra args, no recompilation, map_params


_CONFIGS = {
    "default": (dict(learning_rate=1e-3), _setup_rosenbrock),
    "head_dim": (dict(learning_rate=1e-3, head_dim=4), lambda dtype: (_named_params(dtype), None, _named_objective)),
    "mu_dtype_bf16": (dict(learning_rate=1e-3, mu_dtype=jnp.bfloat16), _setup_mixed_tensor_target),
}


@pytest.mark.parametrize("config", sorted(_CONFIGS))
def test_accepts_extra_args_and_does_not_recompile(config):
  kwargs, setup = _CONFIGS[config]
  opt = optax_mini.adam_mini(**kwargs)
  assert isinstance(opt, optax.GradientTransformationExtraArgs)
  initial_params, _, objective = setup(jnp.float32)

  @jax.jit
  def step(params, state):
    updates = jax.grad(objective)(params)
    updates, state = opt.update(
        updates, state, params, unexpected_extra_args_your_optimizer_doesnt_expect=1
    )
    return optax.apply_updates(params, updates), state

  params, state = initial_params, opt.init(initial_params)
  for _ in range(2):
    params, state = step(params, state)
  assert int(optax.tree.get(state, "count")) == 2

  params, state = initial_params, opt.init(initial_params)
  params, state = step(params, state)
  with test_utils.log_compilations() as compilation_logs:
    _ = step(params, state)
  assert not compilation_logs, 'Optimizer recompiles on second call to "update".'


def test_log_compilations_sees_a_recompilation():
  """The no-recompilation check above is able to fail."""
  f = jax.jit(lambda x: x + 1)
  f(jnp.zeros(3))
  with test_utils.log_compilations() as compilation_logs:
    f(jnp.zeros(4))
  assert compilation_logs


@pytest.mark.parametrize("config", sorted(_CONFIGS))
def test_tree_map_params(config):
  kwargs, setup = _CONFIGS[config]
  opt = optax_mini.adam_mini(**kwargs)
  params, _, objective = setup(jnp.float32)
  state = opt.init(params)
  updates, state = jax.jit(opt.update)(jax.jit(jax.grad(objective))(params), state, params)

  mapped = optax.tree.map_params(opt, lambda v: v, state)
  leaf_equal = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), mapped, state)
  assert jax.tree.structure(mapped) == jax.tree.structure(state)
  assert all(jax.tree.leaves(leaf_equal))
  # The mapped state is still a valid state for this optimizer.
  jax.jit(opt.update)(updates, mapped, params)


# ---------------------------------------------------------------------------
# Convergence


@pytest.mark.parametrize("target", _ALL_TARGETS, ids=lambda t: t.__name__)
def test_converges(target):
  initial_params, final_params, obj_fn = target(jnp.float32)
  opt = optax_mini.adam_mini(learning_rate=1e-2)

  @jax.jit
  def run(params):
    state = opt.init(params)
    state = optax.tree.map_params(opt, lambda v: v, state)

    def step(carry, _):
      params, state = carry
      updates, state = opt.update(jax.grad(obj_fn)(params), state, params)
      return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, state), length=10_000)
    return params

  params = run(initial_params)
  assert jax.tree.structure(params) == jax.tree.structure(initial_params)
  test_utils.assert_trees_all_close(params, final_params, rtol=3e-2, atol=3e-2)


# ---------------------------------------------------------------------------
# inject_hyperparams


_INJECT_CASES = {
    "defaults": (dict(learning_rate=1e-3), ()),
    "all_floats": (
        dict(learning_rate=3e-2, b1=0.8, b2=0.95, eps=1e-6, eps_root=1e-9, weight_decay=0.1),
        (),
    ),
    "value_as_one_block": (
        dict(learning_rate=1e-2, blocks=optax_mini.BlockRules(value_as_one_block=True)),
        (),
    ),
    "mu_dtype_static": (dict(learning_rate=1e-2, mu_dtype=jnp.bfloat16), ("mu_dtype",)),
}


def _assert_inject_matches_plain(kwargs, static_args, params, grads):
  opt = optax_mini.adam_mini(**kwargs)
  opt_inject = optax.inject_hyperparams(optax_mini.adam_mini, static_args=static_args)(
      **kwargs
  )
  state = jax.jit(opt.init)(params)
  state_inject = jax.jit(opt_inject.init)(params)
  for _ in range(2):  # the second step exercises non-zero moments
    updates, state = jax.jit(opt.update)(grads, state, params)
    updates_inject, state_inject = jax.jit(opt_inject.update)(grads, state_inject, params)
    test_utils.assert_trees_all_close(updates_inject, updates, rtol=1e-5)
    assert jax.tree.structure(state_inject.inner_state) == jax.tree.structure(state)
    assert _tree_dtypes_shapes(state_inject.inner_state) == _tree_dtypes_shapes(state)
    test_utils.assert_trees_all_close(state_inject.inner_state, state, rtol=1e-5, atol=1e-5)
    params = optax.apply_updates(params, updates)
  return state_inject


@pytest.mark.parametrize("case", sorted(_INJECT_CASES))
def test_inject_hyperparams_matches_plain(case):
  kwargs, static_args = _INJECT_CASES[case]
  # optax's own inputs: an unnamed list of a 2-D and a 3-D leaf.
  params = [jnp.negative(jnp.ones((2, 3))), jnp.ones((2, 5, 2))]
  grads = [jnp.ones((2, 3)), jnp.negative(jnp.ones((2, 5, 2)))]
  grads = jax.tree.map(
      lambda g, k: g * jax.random.uniform(k, g.shape, minval=0.5, maxval=2.0),
      grads,
      list(jax.random.split(jax.random.key(1), 2)),
  )
  _assert_inject_matches_plain(kwargs, static_args, params, grads)


def test_inject_hyperparams_with_static_head_dim():
  params = {"q_proj": {"kernel": jax.random.normal(jax.random.key(0), (8, 8))}}
  grads = {"q_proj": {"kernel": jax.random.normal(jax.random.key(1), (8, 8))}}
  state_inject = _assert_inject_matches_plain(
      dict(learning_rate=1e-2, head_dim=4), ("head_dim",), params, grads
  )
  # Two heads of 4 columns each: one v per head.
  assert state_inject.inner_state[0].nu["q_proj"]["kernel"].shape == (2,)
  # A static argument is not a (traced) hyperparameter; the learning rate is.
  assert "head_dim" not in state_inject.hyperparams
  assert "learning_rate" in state_inject.hyperparams


def test_inject_hyperparams_head_dim_without_static_args_is_a_clear_error():
  params = {"q_proj": {"kernel": jnp.ones((8, 8))}}
  opt = optax.inject_hyperparams(optax_mini.adam_mini)(learning_rate=1e-2, head_dim=4)
  with pytest.raises(ValueError, match="static_args") as excinfo:
    opt.init(params)
  assert "head_dim" in str(excinfo.value)


def test_inject_hyperparams_learning_rate_can_be_changed():
  params = {"mlp": {"kernel": jnp.ones((3, 4))}}
  grads = {"mlp": {"kernel": jnp.full((3, 4), 0.5)}}
  opt = optax.inject_hyperparams(optax_mini.adam_mini)(learning_rate=1e-2, weight_decay=0.0)
  state = opt.init(params)
  state.hyperparams["learning_rate"] = jnp.asarray(0.0)
  updates, _ = opt.update(grads, state, params)
  test_utils.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, grads))


# ---------------------------------------------------------------------------
# Dtypes


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_preserve_dtype(dtype):
  dtype = jnp.dtype(dtype)
  opt = optax_mini.adam_mini(learning_rate=1e-3, head_dim=4, weight_decay=0.1)
  for params in (jnp.array([1.0, 2.0], dtype=dtype), _named_params(dtype)):
    grads = jax.jit(jax.grad(_sum_of_squares))(params)
    state = jax.jit(opt.init)(params)
    for _ in range(2):
      updates, state = jax.jit(opt.update)(grads, state, params)
      assert jax.tree.map(lambda u: u.dtype, updates) == jax.tree.map(lambda p: p.dtype, params)
      params = optax.apply_updates(params, updates)
      assert jax.tree.map(lambda p: p.dtype, params) == jax.tree.map(lambda g: g.dtype, grads)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_gradient_accumulation_first_update_is_zero(dtype):
  dtype = jnp.dtype(dtype)
  opt = optax.MultiSteps(optax_mini.adam_mini(learning_rate=1e-3, head_dim=4), every_k_schedule=4)
  for params in (jnp.array([1.0, 2.0], dtype=dtype), _named_params(dtype)):
    grads = jax.jit(jax.grad(_sum_of_squares))(params)
    state = jax.jit(opt.init)(params)
    update = jax.jit(opt.update)
    updates, state = update(grads, state, params)
    test_utils.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, grads))
    # ... and the fourth is the optimizer's real (non-zero) step.
    for _ in range(3):
      updates, state = update(grads, state, params)
    assert all(bool(jnp.any(u != 0)) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_state_shape_dtype_stability(dtype):
  opt = optax_mini.adam_mini(learning_rate=1e-3, head_dim=4)
  parabola, _, parabola_obj = _setup_parabola(dtype)
  initial_params = {"parabola": parabola, **_named_params(dtype)}

  def objective(params):
    return parabola_obj(params["parabola"]) + _named_objective(
        {k: v for k, v in params.items() if k != "parabola"}
    )

  @jax.jit
  def step(params, state):
    updates = jax.grad(objective)(params)
    # Defeat compiler optimisation; lax.cond demands identical branch types.
    cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
    updates, state = jax.lax.cond(
        cond, lambda: opt.update(updates, state, params), lambda: (params, state)
    )
    return optax.apply_updates(params, updates), state

  params = initial_params
  state = opt.init(params)
  initial_layout = (jax.tree.structure(state), _tree_dtypes_shapes(state))
  for _ in range(2):
    params, new_state = step(params, state)
    assert all(p.dtype == dtype for p in jax.tree.leaves(params))
    cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
    state = jax.lax.cond(cond, lambda: state, lambda: new_state)  # noqa: B023
    assert (jax.tree.structure(new_state), _tree_dtypes_shapes(new_state)) == initial_layout
    assert (jax.tree.structure(state), _tree_dtypes_shapes(state)) == initial_layout

  adam_state = state[0]
  assert isinstance(adam_state, optax_mini.ScaleByAdamMiniState)
  assert adam_state.count.dtype == jnp.int32 and adam_state.count.shape == ()
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(adam_state.nu))
  assert all(m.dtype == dtype for m in jax.tree.leaves(adam_state.mu))
  # The unconditional update changes the state but not its layout.
  _, stepped = jax.jit(opt.update)(jax.jit(jax.grad(objective))(params), state, params)
  assert (jax.tree.structure(stepped), _tree_dtypes_shapes(stepped)) == initial_layout
  assert any(bool(jnp.any(v > 0)) for v in jax.tree.leaves(stepped[0].nu))


# ---------------------------------------------------------------------------
# Learning-rate schedules


def test_constant_schedule_equals_float_learning_rate():
  initial_params, _, obj_fn = _setup_parabola(jnp.float32)
  opt_with_schedule = optax_mini.adam_mini(learning_rate=optax.constant_schedule(1e-3))
  opt_with_lr = optax_mini.adam_mini(learning_rate=1e-3)

  def step(opt, params, state):
    updates, state = opt.update(jax.grad(obj_fn)(params), state, params)
    return optax.apply_updates(params, updates), state

  params_s, params_f = initial_params, initial_params
  state_s, state_f = opt_with_schedule.init(params_s), opt_with_lr.init(params_f)
  for _ in range(10):
    params_s, state_s = step(opt_with_schedule, params_s, state_s)
    params_f, state_f = step(opt_with_lr, params_f, state_f)
  test_utils.assert_trees_all_close(params_s, params_f)
  assert not np.allclose(params_s, initial_params)


def _element_block_tree(key):
  # Only biases: every Adam-mini block is one element, so Adam-mini is AdamW.
  k1, k2 = jax.random.split(key)
  return {
      "dense": {"bias": jax.random.normal(k1, (5,))},
      "head": {"bias": jax.random.normal(k2, (3,))},
  }


def test_warmup_cosine_schedule_matches_adamw():
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=0.1, warmup_steps=3, decay_steps=12, end_value=1e-3
  )
  mask = {"dense": {"bias": True}, "head": {"bias": False}}
  opt = optax_mini.adam_mini(learning_rate=schedule, weight_decay=0.5, mask=mask)
  reference = optax.adamw(learning_rate=schedule, weight_decay=0.5, mask=mask)
  params = ref_params = _element_block_tree(jax.random.key(0))
  state, ref_state = jax.jit(opt.init)(params), reference.init(ref_params)
  update = jax.jit(opt.update)
  for t in range(12):
    grads = _element_block_tree(jax.random.key(t + 1))
    updates, state = update(grads, state, params)
    ref_updates, ref_state = reference.update(grads, ref_state, ref_params)
    if t == 0:  # the schedule starts at 0: no move at all, decay included
      test_utils.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, grads))
    test_utils.assert_trees_all_close(updates, ref_updates, rtol=1e-6, atol=1e-7)
    params = optax.apply_updates(params, updates)
    ref_params = optax.apply_updates(ref_params, ref_updates)
  assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(params))


# ---------------------------------------------------------------------------
# mu_dtype


def test_mu_dtype_is_honoured():
  params = _named_params(jnp.float32)
  opt = optax_mini.adam_mini(learning_rate=1e-2, head_dim=4, mu_dtype=jnp.bfloat16)
  opt_f32 = optax_mini.adam_mini(learning_rate=1e-2, head_dim=4)
  state, state_f32 = opt.init(params), opt_f32.init(params)
  assert all(m.dtype == jnp.bfloat16 for m in jax.tree.leaves(state[0].mu))
  update, update_f32 = jax.jit(opt.update), jax.jit(opt_f32.update)
  grad = jax.jit(jax.grad(_named_objective))
  for _ in range(3):
    grads = grad(params)
    updates, state = update(grads, state, params)
    _, state_f32 = update_f32(grads, state_f32, params)
    assert all(m.dtype == jnp.bfloat16 for m in jax.tree.leaves(state[0].mu))
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(state[0].nu))
    assert all(u.dtype == jnp.float32 for u in jax.tree.leaves(updates))
    params = optax.apply_updates(params, updates)
  # bf16 mu is the f32 mu rounded (to bf16's ~3 significant digits).
  test_utils.assert_trees_all_close(
      jax.tree.map(lambda m: m.astype(jnp.float32), state[0].mu), state_f32[0].mu, rtol=2e-2, atol=1e-3
  )


# ---------------------------------------------------------------------------
# Abstract init


def test_abstract_init_on_shape_dtype_structs():
  params = _named_params(jnp.float32)
  params["norm"]["scale"] = params["norm"]["scale"].astype(jnp.bfloat16)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  opt = optax_mini.adam_mini(learning_rate=1e-3, head_dim=4, mu_dtype=jnp.bfloat16)
  concrete = _tree_dtypes_shapes(opt.init(params))
  assert _tree_dtypes_shapes(jax.eval_shape(opt.init, abstract)) == concrete
  # Direct init on ShapeDtypeStructs works too (zeros need only shape/dtype).
  direct = opt.init(abstract)
  assert _tree_dtypes_shapes(direct) == concrete
  assert all(not bool(jnp.any(x)) for x in jax.tree.leaves(direct[0]))
  nu_shapes = jax.tree.map(jnp.shape, jax.eval_shape(opt.init, abstract)[0].nu)
  assert nu_shapes == {
      "embed_tokens": {"embedding": (6,)},
      "q_proj": {"kernel": (2,)},
      "mlp": {"kernel": (3,), "bias": (3,)},
      "norm": {"scale": ()},
  }


# ---------------------------------------------------------------------------
# Weight-decay mask


def test_default_mask_decays_only_tensors_with_two_or_more_axes():
  params = _named_params(jnp.float32)
  zeros = jax.tree.map(jnp.zeros_like, params)
  opt = optax_mini.adam_mini(learning_rate=1.0, weight_decay=0.5, head_dim=4)
  updates, _ = opt.update(zeros, opt.init(params), params)
  for (path, u), p in zip(jax.tree_util.tree_leaves_with_path(updates), jax.tree.leaves(params)):
    expected = -1.0 * 0.5 * p if p.ndim >= 2 else jnp.zeros_like(p)
    np.testing.assert_allclose(u, expected, rtol=1e-7, atol=0, err_msg=jax.tree_util.keystr(path))


def _mixed_params(key):
  keys = jax.random.split(key, 4)
  return {
      "mlp": {"kernel": jax.random.normal(keys[0], (4, 3)), "bias": jax.random.normal(keys[1], (3,))},
      "embed_tokens": {"embedding": jax.random.normal(keys[2], (5, 4))},
      "norm": {"scale": jax.random.normal(keys[3], (4,))},
  }


_USER_MASKS = {
    "bool_tree": {
        "mlp": {"kernel": False, "bias": True},
        "embed_tokens": {"embedding": True},
        "norm": {"scale": False},
    },
    # The opposite of the default: decay the 1-D leaves, not the 2-D ones.
    "callable": lambda params: jax.tree.map(lambda p: p.ndim == 1, params),
}


@pytest.mark.parametrize("mask_name", sorted(_USER_MASKS))
def test_user_mask_works_as_in_adamw(mask_name):
  mask = _USER_MASKS[mask_name]
  params = ref_params = _mixed_params(jax.random.key(0))
  # One BlockSpec() per leaf reduces nothing: Adam-mini is then exactly AdamW.
  element_blocks = jax.tree.map(lambda _: optax_mini.BlockSpec(), params)
  kwargs = dict(learning_rate=0.1, b2=0.95, weight_decay=0.3, mask=mask)
  opt = optax_mini.adam_mini(**kwargs, blocks=element_blocks)
  reference = optax.adamw(**kwargs)
  default_mask = optax_mini.adam_mini(**{**kwargs, "mask": None}, blocks=element_blocks)
  state, ref_state = opt.init(params), reference.init(ref_params)
  default_state = default_mask.init(params)
  assert jax.tree.map(jnp.shape, state[0].nu) == jax.tree.map(jnp.shape, params)
  user_mask = mask(params) if callable(mask) else mask
  default_mask_values = jax.tree.map(lambda p: p.ndim >= 2, params)
  update, ref_update = jax.jit(opt.update), jax.jit(reference.update)
  default_update = jax.jit(default_mask.update)
  for t in range(4):
    grads = _mixed_params(jax.random.key(t + 1))
    updates, state = update(grads, state, params)
    ref_updates, ref_state = ref_update(grads, ref_state, ref_params)
    default_updates, default_state = default_update(grads, default_state, params)
    for u, r in zip(jax.tree.leaves(updates), jax.tree.leaves(ref_updates)):
      assert np.max(np.abs(u - r)) <= 1e-6 * np.max(np.abs(r))
    # Where the user mask and the default disagree, so do the updates.
    for u, d, user, default in zip(
        jax.tree.leaves(updates), jax.tree.leaves(default_updates),
        jax.tree.leaves(user_mask), jax.tree.leaves(default_mask_values),
    ):
      assert np.allclose(u, d, rtol=1e-6, atol=0) == (user == default)
    params = optax.apply_updates(params, updates)
    ref_params = optax.apply_updates(ref_params, ref_updates)


def test_default_mask_does_not_decay_a_norm_scale_of_several_axes():
  """xlstm-jax's multi-head norm ``outnorm/sharded/scale [layers, shards,
  heads, head_dim]`` and its tensor-parallel ``ffn_norm/sharded/scale
  [shards, d / shards]`` were decayed (several axes), where the official rule
  skips any name holding ``norm``. A Dense inside an adaptive norm stays a
  kernel: decayed."""
  layers = 3
  params = {"block": {"outnorm": {"sharded": {"scale": jnp.ones((layers, 2, 4, 8))}},
                      "ffn_norm": {"sharded": {"scale": jnp.ones((layers, 2, 16))}},
                      "norm1": {"linear": {"kernel": jnp.ones((layers, 32, 6 * 32))}},
                      "proj": {"kernel": jnp.ones((layers, 32, 32))}}}
  blocks = optax_mini.BlockRules(stacked={"block": 0})
  mask = optax_mini.default_weight_decay_mask(params, blocks=blocks)
  assert mask == {"block": {"outnorm": {"sharded": {"scale": False}},
                            "ffn_norm": {"sharded": {"scale": False}},
                            "norm1": {"linear": {"kernel": True}},
                            "proj": {"kernel": True}}}
  opt = optax_mini.adam_mini(learning_rate=1.0, weight_decay=0.5, blocks=blocks)
  updates, _ = opt.update(jax.tree.map(jnp.zeros_like, params), opt.init(params), params)
  np.testing.assert_array_equal(updates["block"]["outnorm"]["sharded"]["scale"], 0.0)
  np.testing.assert_array_equal(updates["block"]["proj"]["kernel"], -0.5)
