"""Against a float64 NumPy Adam-mini, for what the official code cannot do.

The reference implements REFERENCE.md's update with the blocks of each case
written out by hand (reshape + mean), independent of ``optax_mini.blocks``.
Also: with every block one element, Adam-mini is ``optax.adamw``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_mini
from optax_mini import BlockRules, Rule

LR, B1, B2, EPS, WD = 3e-2, 0.9, 0.95, 1e-8, 0.1
STEPS = 5


def numpy_adam_mini(params, grads_per_step, block_mean, decay):
  """float64 reference. block_mean[name](g2) returns the per-block mean of g2,
  broadcastable against g (keepdims)."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: None for k in p}
  for t, grads in enumerate(grads_per_step, start=1):
    for k in p:
      g = np.asarray(grads[k], np.float64)
      mean = block_mean[k](g * g)
      v[k] = (1 - B2) * mean if v[k] is None else B2 * v[k] + (1 - B2) * mean
      m[k] = B1 * m[k] + (1 - B1) * g
      if decay[k]:
        p[k] = p[k] * (1 - LR * WD)
      p[k] = p[k] - LR * (m[k] / (1 - B1**t)) / (np.sqrt(v[k] / (1 - B2**t)) + EPS)
  return p, v


def run_ours(params, grads_per_step, **kwargs):
  tx = optax_mini.adam_mini(LR, b1=B1, b2=B2, eps=EPS, weight_decay=WD, **kwargs)
  state = tx.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for grads in grads_per_step:
    params, state = step(params, state, grads)
  return params, state[0].nu


def random_case(shapes, seed=0):
  rng = np.random.default_rng(seed)
  params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  # Give each block its own gradient scale so a wrong partition shows.
  grads = [
      {k: (rng.normal(size=s) * rng.uniform(0.1, 3.0, size=s[-1:] if s else ())).astype(np.float32) for k, s in shapes.items()}
      for _ in range(STEPS)
  ]
  return params, grads


def nest(flat):
  """'a/b/c' keys -> nested dicts (so the optimizer sees real paths)."""
  out: dict = {}
  for key, value in flat.items():
    node = out
    *parents, last = key.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[last] = jnp.asarray(value)
  return out


def flat(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(x)
          for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_close(ours, ref):
  for k in ref:
    rel = np.max(np.abs(ours[k] - ref[k])) / np.max(np.abs(ref[k]))
    assert rel <= 1e-5, (k, rel)


def check(shapes, block_mean, decay, expected_v_shapes, **kwargs):
  params, grads = random_case(shapes)
  ref, ref_v = numpy_adam_mini(params, grads, block_mean, decay)
  ours, nu = run_ours(nest(params), [nest(g) for g in grads], **kwargs)
  ours, nu = flat(ours), flat(nu)
  assert {k: nu[k].shape for k in nu} == expected_v_shapes
  assert_close(ours, ref)
  for k in ref_v:
    np.testing.assert_allclose(nu[k].reshape(np.squeeze(ref_v[k]).shape), np.squeeze(ref_v[k]), rtol=1e-5)


def test_heads_times_head_dim_not_equal_to_dim():
  # dim 24, 4 query heads and 2 kv heads of 16 (Qwen3-like: 64 != 24).
  dim, heads, kv, hd = 24, 4, 2, 16
  shapes = {
      "attn/q_proj/kernel": (dim, heads * hd),
      "attn/k_proj/kernel": (dim, kv * hd),
      "attn/v_proj/kernel": (dim, kv * hd),
      "attn/o_proj/kernel": (heads * hd, dim),
      "norm/scale": (dim,),
  }
  block_mean = {
      "attn/q_proj/kernel": lambda g2: g2.reshape(dim, heads, hd).mean(axis=(0, 2), keepdims=True).repeat(hd, 2).reshape(1, heads * hd),
      "attn/k_proj/kernel": lambda g2: g2.reshape(dim, kv, hd).mean(axis=(0, 2), keepdims=True).repeat(hd, 2).reshape(1, kv * hd),
      "attn/v_proj/kernel": lambda g2: g2.mean(axis=0, keepdims=True),
      "attn/o_proj/kernel": lambda g2: g2.mean(axis=0, keepdims=True),
      "norm/scale": lambda g2: g2.mean(),
  }
  decay = {k: len(s) >= 2 for k, s in shapes.items()}
  expected = {"attn/q_proj/kernel": (heads,), "attn/k_proj/kernel": (kv,), "attn/v_proj/kernel": (kv * hd,),
              "attn/o_proj/kernel": (dim,), "norm/scale": ()}
  params, grads = random_case(shapes)
  ref, _ = numpy_adam_mini(params, grads, block_mean, decay)
  ours, nu = run_ours(nest(params), [nest(g) for g in grads], head_dim=hd)
  assert {k: v.shape for k, v in flat(nu).items()} == expected
  assert_close(flat(ours), ref)


def test_dense_general_and_heads_first_kernels():
  # [D, N, H] = [in, heads, head_dim] (flax/MaxText), [N, H, D] out, and
  # Gemma's heads-first q_einsum [N, D, H] / kv_einsum [2, K, D, H].
  d, n, k, h = 12, 4, 2, 6
  shapes = {
      "attention/query/kernel": (d, n, h),
      "attention/key/kernel": (d, k, h),
      "attention/value/kernel": (d, k, h),
      "attention/out/kernel": (n, h, d),
      "gemma/q_einsum/w": (n, d, h),
      "gemma/kv_einsum/w": (2, k, d, h),
  }

  def kv_fused(g2):  # k: per head (d, h averaged); v: per output neuron (d averaged)
    k_part = g2[:1].mean(axis=(2, 3), keepdims=True).repeat(h, 3)
    return np.concatenate([k_part, g2[1:].mean(axis=2, keepdims=True)], 0)

  block_mean = {
      "attention/query/kernel": lambda g2: g2.mean(axis=(0, 2), keepdims=True),
      "attention/key/kernel": lambda g2: g2.mean(axis=(0, 2), keepdims=True),
      "attention/value/kernel": lambda g2: g2.mean(axis=0, keepdims=True),
      "attention/out/kernel": lambda g2: g2.mean(axis=(0, 1), keepdims=True),
      "gemma/q_einsum/w": lambda g2: g2.mean(axis=(1, 2), keepdims=True),
      "gemma/kv_einsum/w": kv_fused,
  }
  expected = {"attention/query/kernel": (n,), "attention/key/kernel": (k,), "attention/value/kernel": (k, h),
              "attention/out/kernel": (d,), "gemma/q_einsum/w": (n,), "gemma/kv_einsum/w": (2, k, h)}
  # A 3-D query kernel under a generic name could be [in, heads, head_dim]
  # or heads-first; the head counts settle it.
  check(shapes, block_mean, dict.fromkeys(shapes, True), expected,
        blocks=BlockRules(num_heads=n, num_kv_heads=k))


def test_query_key_per_neuron_on_every_layout():
  # BlockRules(query_key_per_neuron=True): query/key kernels average only
  # their input axis, whatever the layout; values, outputs and MLP as usual.
  d, n, k, h, layers = 12, 4, 2, 6, 3
  shapes = {
      "attn/q_proj/kernel": (d, n * h),  # flat [in, heads*head_dim]
      "attn/k_proj/kernel": (d, k * h),
      "attn/v_proj/kernel": (d, k * h),
      "attention/query/kernel": (d, n, h),  # [in, heads, head_dim]
      "gemma/q_einsum/w": (n, d, h),  # heads-first [heads, in, head_dim]
      "gemma/kv_einsum/w": (2, k, d, h),  # fused k|v along a parts axis
      "layers/attn/q_proj/kernel": (layers, d, n * h),  # stacked
  }
  block_mean = {
      "attn/q_proj/kernel": lambda g2: g2.mean(axis=0, keepdims=True),
      "attn/k_proj/kernel": lambda g2: g2.mean(axis=0, keepdims=True),
      "attn/v_proj/kernel": lambda g2: g2.mean(axis=0, keepdims=True),
      "attention/query/kernel": lambda g2: g2.mean(axis=0, keepdims=True),
      "gemma/q_einsum/w": lambda g2: g2.mean(axis=1, keepdims=True),
      "gemma/kv_einsum/w": lambda g2: g2.mean(axis=2, keepdims=True),
      "layers/attn/q_proj/kernel": lambda g2: g2.mean(axis=1, keepdims=True),
  }
  expected = {"attn/q_proj/kernel": (n * h,), "attn/k_proj/kernel": (k * h,), "attn/v_proj/kernel": (k * h,),
              "attention/query/kernel": (n, h), "gemma/q_einsum/w": (n, h), "gemma/kv_einsum/w": (2, k, h),
              "layers/attn/q_proj/kernel": (layers, n * h)}
  rules = BlockRules(query_key_per_neuron=True, stacked={"layers": 0}, num_heads=n, num_kv_heads=k)
  check(shapes, block_mean, dict.fromkeys(shapes, True), expected, head_dim=h, blocks=rules)


def test_stacked_layers_are_never_averaged():
  layers, dim, heads, hd, ffn = 3, 8, 2, 4, 12
  shapes = {
      "layers/attn/q_proj/kernel": (layers, dim, heads * hd),
      "layers/mlp/up_proj/kernel": (layers, dim, ffn),
      "layers/norm/scale": (layers, dim),
      "layers/attn/q_proj/bias": (layers, heads * hd),
      "maxtext/layers/self_attention/query/kernel": (dim, layers, heads, hd),
      "embed_tokens/embedding": (20, dim),
  }
  block_mean = {
      "layers/attn/q_proj/kernel": lambda g2: g2.reshape(layers, dim, heads, hd).mean(axis=(1, 3), keepdims=True).repeat(hd, 3).reshape(layers, 1, heads * hd),
      "layers/mlp/up_proj/kernel": lambda g2: g2.mean(axis=1, keepdims=True),
      "layers/norm/scale": lambda g2: g2.mean(axis=1, keepdims=True),
      "layers/attn/q_proj/bias": lambda g2: g2,
      "maxtext/layers/self_attention/query/kernel": lambda g2: g2.mean(axis=(0, 3), keepdims=True),
      "embed_tokens/embedding": lambda g2: g2.mean(axis=1, keepdims=True),
  }
  decay = {k: len(s) >= 2 for k, s in shapes.items()}
  expected = {"layers/attn/q_proj/kernel": (layers, heads), "layers/mlp/up_proj/kernel": (layers, ffn),
              "layers/norm/scale": (layers,), "layers/attn/q_proj/bias": (layers, heads * hd),
              "maxtext/layers/self_attention/query/kernel": (layers, heads), "embed_tokens/embedding": (20,)}
  # Stacked norm scales and biases are 2-D, but one layer's are 1-D: the
  # default mask must not decay them.
  decay["layers/norm/scale"] = decay["layers/attn/q_proj/bias"] = False
  params, grads = random_case(shapes)
  ref, _ = numpy_adam_mini(params, grads, block_mean, decay)
  # First match wins, so the more specific pattern comes first.
  rules = BlockRules(stacked={"maxtext/layers": 1, "layers": 0})
  ours, nu = run_ours(nest(params), [nest(g) for g in grads], head_dim=hd, blocks=rules)
  assert {k: v.shape for k, v in flat(nu).items()} == expected
  assert_close(flat(ours), ref)


@pytest.mark.parametrize("dtype", [jnp.float32])
def test_single_element_blocks_equal_optax_adamw(dtype):
  rng = np.random.default_rng(1)
  params = {"w": jnp.asarray(rng.normal(size=(5, 7)), dtype), "b": jnp.asarray(rng.normal(size=(7,)), dtype),
            "emb": {"embedding": jnp.asarray(rng.normal(size=(9, 3)), dtype)}}
  mask = {"w": True, "b": False, "emb": {"embedding": True}}
  every_element = BlockRules(rules=[("*", "element")])
  mini = optax_mini.adam_mini(1e-2, b1=0.8, b2=0.9, eps=1e-6, weight_decay=0.3, mask=mask, blocks=every_element)
  adamw = optax.adamw(1e-2, b1=0.8, b2=0.9, eps=1e-6, weight_decay=0.3, mask=mask)
  s_mini, s_adamw = mini.init(params), adamw.init(params)
  p_mini = p_adamw = params
  for t in range(6):
    grads = jax.tree.map(lambda x, t=t: jnp.asarray(rng.normal(size=x.shape) * (t + 1), dtype), params)
    u_mini, s_mini = jax.jit(mini.update)(grads, s_mini, p_mini)
    u_adamw, s_adamw = jax.jit(adamw.update)(grads, s_adamw, p_adamw)
    for a, b in zip(jax.tree.leaves(u_mini), jax.tree.leaves(u_adamw)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    p_mini, p_adamw = optax.apply_updates(p_mini, u_mini), optax.apply_updates(p_adamw, u_adamw)
  for a, b in zip(jax.tree.leaves(p_mini), jax.tree.leaves(p_adamw)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_wide_output_layers_take_the_cpu_halving_path():
  # Kept rows wider than 16384 floats are summed by pairwise halving on CPU
  # (XLA:CPU's column sum is slow there); the numbers must not change. 12 rows:
  # two halvings, then a sum over 3.
  shapes = {"lm_head/kernel": (12, 20000), "embed_tokens/embedding": (20000, 4)}
  block_mean = {
      "lm_head/kernel": lambda g2: g2.mean(axis=0, keepdims=True),
      "embed_tokens/embedding": lambda g2: g2.mean(axis=1, keepdims=True),
  }
  expected = {"lm_head/kernel": (20000,), "embed_tokens/embedding": (20000,)}
  check(shapes, block_mean, dict.fromkeys(shapes, True), expected)


def test_fused_kernels_get_each_parts_blocks():
  # q and k parts: one v per head; v (and gate, up): one per output neuron.
  # Reference block means written per layout in NumPy, independently of the
  # library's part plan.
  d, n, kv, h, f = 12, 3, 1, 4, 20  # the MLP widens (f > d), as every gating_einsum does
  shapes = {
      "gemma/qkv_einsum/w": (3, n, d, h),  # Gemma MHA [3, N, D, H]
      "gemma/gating_einsum": (2, f, d),  # [2, F, D]: gate, up
      "gpt2/c_attn/kernel": (3 * d, d),  # HF FlaxConv1D [out, in], out = q|k|v
      "bloom/query_key_value/kernel": (d, 3 * d),  # [in, (N, 3, H)]: per-head interleave
      # BLOOM's signature: EasyDeL's Falcon keeps [q | k | v] runs under the
      # same path, so the kernel is read as BLOOM's only beside it.
      "bloom/word_embeddings_layernorm/scale": (d,),
      "qwen/qkv_proj/kernel": (d, (n + 2 * kv) * h),  # [in, q | k | v], GQA
  }

  def heads_then_values(parts_axis, g2, reduce_in, head_dims):
    """Concatenates per-part means along ``parts_axis``: a part with a head
    size averages runs of it; None keeps every position."""
    out, offset = [], 0
    for size, hd in head_dims:
      part = np.take(g2, range(offset, offset + size), axis=parts_axis).mean(axis=reduce_in, keepdims=True)
      if hd is not None:
        moved = np.moveaxis(part, parts_axis, -1)
        moved = moved.reshape(moved.shape[:-1] + (size // hd, hd)).mean(-1, keepdims=True).repeat(hd, -1)
        part = np.moveaxis(moved.reshape(moved.shape[:-2] + (size,)), -1, parts_axis)
      out.append(part)
      offset += size
    return np.concatenate(out, parts_axis)

  def qkv_einsum(g2):
    q = g2[:1].mean(axis=(2, 3), keepdims=True).repeat(h, 3)
    k = g2[1:2].mean(axis=(2, 3), keepdims=True).repeat(h, 3)
    return np.concatenate([q, k, g2[2:].mean(axis=2, keepdims=True)], 0)

  def bloom(g2):
    per_head = g2.reshape(d, n, 3, h)
    qk = per_head[:, :, :2].mean(axis=(0, 3), keepdims=True).repeat(h, 3)
    v = per_head[:, :, 2:].mean(axis=0, keepdims=True)
    return np.concatenate([qk, v], 2).reshape(1, 3 * d)

  block_mean = {
      "gemma/qkv_einsum/w": qkv_einsum,
      "gemma/gating_einsum": lambda g2: g2.mean(axis=2, keepdims=True),
      "gpt2/c_attn/kernel": lambda g2: heads_then_values(0, g2, (1,), [(d, h), (d, h), (d, None)]),
      "bloom/query_key_value/kernel": bloom,
      "bloom/word_embeddings_layernorm/scale": lambda g2: g2.mean(keepdims=True),
      "qwen/qkv_proj/kernel": lambda g2: heads_then_values(1, g2, (0,), [(n * h, h), (kv * h, h), (kv * h, None)]),
  }
  expected = {"gemma/qkv_einsum/w": (3, n, h), "gemma/gating_einsum": (2, f), "gpt2/c_attn/kernel": (3 * d,),
              "bloom/query_key_value/kernel": (3 * d,), "bloom/word_embeddings_layernorm/scale": (),
              "qwen/qkv_proj/kernel": ((n + 2 * kv) * h,)}
  gqa = "qwen/qkv_proj/kernel"
  mha = [k for k in shapes if k != gqa]
  # The multi-head models need nothing but head_dim ...
  check({k: shapes[k] for k in mha}, block_mean, {k: not k.endswith("scale") for k in mha},
        {k: expected[k] for k in mha}, head_dim=h)
  # ... a generic fused GQA kernel needs the head counts (its parts differ).
  check({gqa: shapes[gqa]}, block_mean, {gqa: True}, {gqa: expected[gqa]}, head_dim=h,
        blocks=BlockRules(num_heads=n, num_kv_heads=kv))
  with pytest.raises(ValueError, match=r"qkv_proj.*sizes of its q and k/v parts are unknown"):
    optax_mini.block_specs(nest({gqa: np.zeros(shapes[gqa])}), head_dim=h)


def test_easydel_falcon_query_key_value_runs_and_groups():
  # EasyDeL's Falcon (easydel/layers/attention/_unified.py) splits
  # self_attention/query_key_value/kernel, the path and shape of HF BLOOM's
  # per-head interleave, into [q | k | v] runs without GQA
  # ("jnp.split(qkv, 3, -1)") and, with it, per key/value head as
  # "(h gs d)", gs = the group's query heads, then k, then v. Without BLOOM's
  # word_embeddings_layernorm the default rules raise; the rule the error
  # offers gives the runs, and with the head counts the groups.
  d, n, kv, h = 12, 3, 1, 4
  runs = {"falcon/h/0/self_attention/query_key_value/kernel": (d, 3 * d),
          "falcon/h/0/self_attention/dense/kernel": (d, d)}
  groups = {"falcon/h/0/self_attention/query_key_value/kernel": (d, (n + 2 * kv) * h),
            "falcon/h/0/self_attention/dense/kernel": (n * h, d)}
  qkv = "falcon/h/0/self_attention/query_key_value/kernel"
  out = "falcon/h/0/self_attention/dense/kernel"

  def per_head(x, size):  # mean over the input and each run of `size` columns
    cols = x.mean(axis=0, keepdims=True)
    return cols.reshape(1, -1, size).mean(-1, keepdims=True).repeat(size, -1).reshape(1, -1)

  def easydel_runs(g2):
    q, k, v = np.split(g2, 3, axis=-1)
    return np.concatenate([per_head(q, h), per_head(k, h), v.mean(axis=0, keepdims=True)], -1)

  def easydel_groups(g2):
    grouped = g2.reshape(d, kv, n // kv + 2, h)
    q = grouped[:, :, :-2].mean(axis=(0, 3), keepdims=True).repeat(h, 3)
    k = grouped[:, :, -2:-1].mean(axis=(0, 3), keepdims=True).repeat(h, 3)
    v = grouped[:, :, -1:].mean(axis=0, keepdims=True)
    return np.concatenate([q, k, v], 2).reshape(1, -1)

  neurons = lambda g2: g2.mean(axis=0, keepdims=True)  # noqa: E731
  decay = {qkv: True, out: True}
  with pytest.raises(ValueError, match=r"query_key_value.*'i \(p n h\)' or 'i \(n p h\)'.*"
                     r"layout='i \(p n h\)', where='nph == 3\*i'"):
    optax_mini.block_specs(nest({k: np.zeros(s) for k, s in runs.items()}), head_dim=h)
  check(runs, {qkv: easydel_runs, out: neurons}, decay, {qkv: (3 * d,), out: (d,)}, head_dim=h,
        blocks=BlockRules(rules=[Rule("query_key_value/kernel", "q,k,v", layout="i (p n h)",
                                      where="pnh == 3*i")]))
  with pytest.raises(ValueError, match=r"query_key_value.*sizes of its q and k/v parts are unknown"):
    optax_mini.block_specs(nest({k: np.zeros(s) for k, s in groups.items()}), head_dim=h)
  check(groups, {qkv: easydel_groups, out: neurons}, decay, {qkv: ((n + 2 * kv) * h,), out: (d,)}, head_dim=h,
        blocks=BlockRules(rules=[Rule("query_key_value/kernel", "q,k,v", layout="i (n p h)")],
                          num_heads=n, num_kv_heads=kv))


def test_qwen3_next_gated_query_is_per_head_and_its_gate_per_neuron():
  # Qwen3-Next's and Qwen3.5's full-attention query holds, per head, its
  # query and then an output gate (HF: q_proj(x).view(..., -1, 2 * head_dim)
  # chunked in two; MaxText: DenseGeneral (heads, 2 * head_dim) split in
  # two on the last axis). The gate multiplies the attention's output
  # neurons. Their gated-DeltaNet layers (in_proj_qkvz, or in_proj_qkv and
  # in_proj_z) say which model it is.
  d, n, h = 12, 3, 4
  hf = {"model/layers/3/self_attn/q_proj/weight": (n * 2 * h, d),  # PyTorch [out, in]
        "model/layers/3/self_attn/o_proj/weight": (d, n * h),
        "model/layers/0/linear_attn/in_proj_qkvz/weight": (4 * h, d)}
  maxtext = {"decoder/layers/layer_3/attention/attention/query/kernel": (d, n, 2 * h),
             "decoder/layers/layer_3/attention/attention/out/kernel": (n * h, d),
             "decoder/layers/layer_0/attention/in_proj_qkvz/kernel": (d, 4 * h)}

  def hf_query(g2):
    per_head = g2.reshape(n, 2, h, d)
    q = per_head[:, :1].mean(axis=(2, 3), keepdims=True).repeat(h, 2)
    gate = per_head[:, 1:].mean(axis=3, keepdims=True)
    return np.concatenate([q, gate], 1).reshape(n * 2 * h, 1)

  def maxtext_query(g2):
    q = g2[..., :h].mean(axis=(0, 2), keepdims=True).repeat(h, 2)
    return np.concatenate([q, g2[..., h:].mean(axis=0, keepdims=True)], 2)

  rows = lambda g2: g2.mean(axis=1, keepdims=True)  # noqa: E731  (PyTorch [out, in]: per output row)
  cols = lambda g2: g2.mean(axis=0, keepdims=True)  # noqa: E731
  q_hf, o_hf, z_hf = hf
  check(hf, {q_hf: hf_query, o_hf: rows, z_hf: rows}, dict.fromkeys(hf, True),
        {q_hf: (n * 2 * h,), o_hf: (d,), z_hf: (4 * h,)}, head_dim=h,
        blocks=BlockRules(weight_layout="torch"))
  q_mt, out_mt, z_mt = maxtext
  check(maxtext, {q_mt: maxtext_query, out_mt: cols, z_mt: cols}, dict.fromkeys(maxtext, True),
        {q_mt: (n, 2 * h), out_mt: (d,), z_mt: (4 * h,)}, head_dim=h)
  # Qwen3.5 in HF names its DeltaNet's projections in_proj_qkv and in_proj_z.
  z = "model/layers/0/linear_attn/in_proj_z/weight"
  qwen3_5 = {q_hf: hf[q_hf], o_hf: hf[o_hf], z: (2 * h, d)}
  check(qwen3_5, {q_hf: hf_query, o_hf: rows, z: rows}, dict.fromkeys(qwen3_5, True),
        {q_hf: (n * 2 * h,), o_hf: (d,), z: (2 * h,)}, head_dim=h, blocks=BlockRules(weight_layout="torch"))


def test_dbrx_experts_minimax_lightning_qkv_and_an_experts_first_router():
  # Layouts read from the models' code (transformers 4.57.6, EasyDeL 0.3.0):
  # DBRX's experts are raw [E * F, D] parameters viewed [E, F, D]; w1 and v1
  # are used transposed (x @ w1[e].T: a row per expert neuron), w2 as is
  # (h @ w2[e]: each expert's D outputs). MiniMax's lightning attention
  # reshapes qkv_proj's output (heads, 3 * head_dim) and splits it per head,
  # every head with its own key and value beside GQA layers. EasyDeL's
  # DeepSeek-V2 router mlp/gate is [experts, d].
  e, f, d, n, kv, h = 3, 8, 12, 4, 2, 4
  shapes = {
      "transformer/blocks/0/ffn/experts/mlp/w1": (e * f, d),
      "transformer/blocks/0/ffn/experts/mlp/v1": (e * f, d),
      "transformer/blocks/0/ffn/experts/mlp/w2": (e * f, d),
      "model/layers/0/self_attn/qkv_proj/kernel": (d, n * 3 * h),
      "model/layers/0/self_attn/output_gate/kernel": (d, n * h),
      "model/layers/1/mlp/gate/kernel": (e, d),
      "model/layers/1/mlp/experts/up_proj/kernel": (e, d, f),
  }
  w1, v1, w2, qkv, gate_out, router, up = shapes

  def minimax(g2):
    per_head = g2.mean(axis=0, keepdims=True).reshape(1, n, 3, h)
    qk = per_head[:, :, :2].mean(axis=3, keepdims=True).repeat(h, 3)
    return np.concatenate([qk, per_head[:, :, 2:]], 2).reshape(1, n * 3 * h)

  block_mean = {
      w1: lambda g2: g2.mean(axis=1, keepdims=True),
      v1: lambda g2: g2.mean(axis=1, keepdims=True),
      w2: lambda g2: g2.reshape(e, f, d).mean(axis=1, keepdims=True).repeat(f, 1).reshape(e * f, d),
      qkv: minimax,
      gate_out: lambda g2: g2.mean(axis=0, keepdims=True),
      router: lambda g2: g2.mean(axis=1, keepdims=True),
      up: lambda g2: g2.mean(axis=1, keepdims=True),
  }
  expected = {w1: (e * f,), v1: (e * f,), w2: (e, d), qkv: (n * 3 * h,), gate_out: (n * h,), router: (e,),
              up: (e, f)}
  params, grads = random_case(shapes)
  ref, _ = numpy_adam_mini(params, grads, block_mean, dict.fromkeys(shapes, True))
  rules = BlockRules(num_experts=e, num_heads=n, num_kv_heads=kv)
  ours, nu = run_ours(nest(params), [nest(g) for g in grads], head_dim=h, blocks=rules)
  assert {k: v.shape for k, v in flat(nu).items()} == expected
  assert_close(flat(ours), ref)
  # Without the expert count DBRX's w2 cannot be split: it says so.
  with pytest.raises(ValueError, match=r"w2.*num_experts"):
    optax_mini.block_specs(nest({w2: np.zeros(shapes[w2])}))


def test_maxtext_fused_qkv():
  # MaxText's fused_qkv (layers/attentions.py init_qkv_w): qkv_proj [emb,
  # q_heads + 2 * kv_heads, head_dim], split along the heads axis into
  # [q | k | v] runs; GPT-3's [emb, 3, heads, head_dim].
  d, n, kv, h = 12, 4, 2, 4
  shapes = {"llama/qkv_proj/kernel": (d, n + 2 * kv, h), "gpt3/qkv_proj/kernel": (d, 3, n, h)}
  llama, gpt3 = shapes

  def runs(g2):
    q = g2[:, :n].mean(axis=(0, 2), keepdims=True).repeat(h, 2)
    k = g2[:, n:n + kv].mean(axis=(0, 2), keepdims=True).repeat(h, 2)
    return np.concatenate([q, k, g2[:, n + kv:].mean(axis=0, keepdims=True)], 1)

  def parts(g2):
    qk = g2[:, :2].mean(axis=(0, 3), keepdims=True).repeat(h, 3)
    return np.concatenate([qk, g2[:, 2:].mean(axis=0, keepdims=True)], 1)

  params, grads = random_case(shapes)
  ref, _ = numpy_adam_mini(params, grads, {llama: runs, gpt3: parts}, dict.fromkeys(shapes, True))
  ours, nu = run_ours(nest(params), [nest(g) for g in grads], blocks=BlockRules(num_heads=n, num_kv_heads=kv))
  assert {k: v.shape for k, v in flat(nu).items()} == {llama: (n + 2 * kv, h), gpt3: (3, n, h)}
  assert_close(flat(ours), ref)


def test_gpt2_cross_attention():
  # HF Flax GPT-2 (add_cross_attention=True) and EasyDeL's port: FlaxConv1D
  # kernels [out, in]; crossattention's q_attn is the query, c_attn the
  # keys and values as two runs ("jnp.split(kv_out, 2, axis=2)"), c_proj
  # its output.
  d, n, h = 16, 4, 4
  shapes = {"h/0/crossattention/q_attn/kernel": (d, d), "h/0/crossattention/c_attn/kernel": (2 * d, d),
            "h/0/crossattention/c_proj/kernel": (d, d)}
  q, kv_, out = shapes

  def keys_then_values(g2):
    k = g2[:d].mean(axis=1, keepdims=True).reshape(n, h).mean(axis=1, keepdims=True).repeat(h, 1)
    return np.concatenate([k.reshape(d, 1), g2[d:].mean(axis=1, keepdims=True)], 0)

  block_mean = {
      q: lambda g2: g2.mean(axis=1, keepdims=True).reshape(n, h).mean(axis=1, keepdims=True).repeat(h, 1).reshape(d, 1),
      kv_: keys_then_values,
      out: lambda g2: g2.mean(axis=1, keepdims=True),
  }
  params, grads = random_case(shapes)
  ref, _ = numpy_adam_mini(params, grads, block_mean, dict.fromkeys(shapes, True))
  ours, nu = run_ours(nest(params), [nest(g) for g in grads], head_dim=h)
  assert {k: v.shape for k, v in flat(nu).items()} == {q: (n,), kv_: (2 * d,), out: (d,)}
  assert_close(flat(ours), ref)


def test_mixture_of_experts_kernels_keep_their_experts():
  # Each expert's kernel is a layer of its own: one v per output neuron of
  # each expert, never averaged across experts. Layouts as the libraries
  # store them: tunix's Qwen3-MoE [E, D, F] params on mlp, MaxText's MoeBlock
  # [E, F, D], Gemma 4's moe/gating_einsum [E, 2, F, D] (gate|up; its experts
  # narrow, F < D) and moe/linear [E, F, D]; the routers [D, E] per expert.
  e, d, f = 3, 12, 8
  shapes = {
      "layer/mlp/gate_proj": (e, d, f),
      "layer/mlp/down_proj": (e, f, d),
      "layer/mlp/router/kernel": (d, e),
      "moeblock_0/wi_0": (e, d, f),
      "moeblock_0/wo": (e, f, d),
      "moe/gating_einsum": (e, 2, f, d),
      "moe/linear": (e, f, d),
      "moe/router_logits": (d, e),
  }
  per_expert_neuron = lambda g2: g2.mean(axis=1, keepdims=True)  # noqa: E731
  block_mean = {
      "layer/mlp/gate_proj": per_expert_neuron,
      "layer/mlp/down_proj": per_expert_neuron,
      "layer/mlp/router/kernel": lambda g2: g2.mean(axis=0, keepdims=True),
      "moeblock_0/wi_0": per_expert_neuron,
      "moeblock_0/wo": per_expert_neuron,
      "moe/gating_einsum": lambda g2: g2.mean(axis=3, keepdims=True),
      "moe/linear": per_expert_neuron,
      "moe/router_logits": lambda g2: g2.mean(axis=0, keepdims=True),
  }
  expected = {
      "layer/mlp/gate_proj": (e, f), "layer/mlp/down_proj": (e, d), "layer/mlp/router/kernel": (e,),
      "moeblock_0/wi_0": (e, f), "moeblock_0/wo": (e, d), "moe/gating_einsum": (e, 2, f),
      "moe/linear": (e, d), "moe/router_logits": (e,),
  }
  check(shapes, block_mean, dict.fromkeys(shapes, True), expected)


def test_gemma4_key_only_and_per_layer_projection():
  # Gemma 4's global layers that share keys and values: k_einsum [K, D, H],
  # one v per key head; the embedder's per-layer projection [D, L, P]
  # ("BTD,DNP->BTNP"), one v per output (not per input row, as "embed" in
  # its path would have it); the per-layer table [V, L, P], one v per token.
  k, d, h, layers, p, vocab = 2, 12, 8, 3, 4, 10
  shapes = {
      "layers/5/attn/k_einsum/w": (k, d, h),
      "embedder/per_layer_model_projection/w": (d, layers, p),
      "embedder/per_layer_input_embedding": (vocab, layers, p),
  }
  block_mean = {
      "layers/5/attn/k_einsum/w": lambda g2: g2.mean(axis=(1, 2), keepdims=True),
      "embedder/per_layer_model_projection/w": lambda g2: g2.mean(axis=0, keepdims=True),
      "embedder/per_layer_input_embedding": lambda g2: g2.mean(axis=(1, 2), keepdims=True),
  }
  expected = {
      "layers/5/attn/k_einsum/w": (k,),
      "embedder/per_layer_model_projection/w": (layers, p),
      "embedder/per_layer_input_embedding": (vocab,),
  }
  check(shapes, block_mean, dict.fromkeys(shapes, True), expected)


def test_vision_position_tables_and_class_tokens():
  # ViT (HF Flax, DINOv2): position_embeddings [1, positions, d] broadcast
  # over the batch, one v per position (not one for the whole table, which
  # reading its leading 1 as the token axis gives); big_vision's
  # posembed_input/pos_embedding likewise; a 2-D grid [1, height, width, d]
  # (ViTDet, SAM) per grid position; a [1, 1, d] class token and a [1, d]
  # mask token are one token each; a soft prompt [1, tokens, d] under an
  # embedding name one v per token; the patch projection a conv kernel, one
  # v per output channel.
  d, positions, side, prompt = 8, 5, 3, 4
  shapes = {
      "embeddings/position_embeddings": (1, positions, d),
      "posembed_input/pos_embedding": (1, positions, d),
      "backbone/pos_embed": (1, side, side + 1, d),
      "embeddings/cls_token": (1, 1, d),
      "embeddings/mask_token": (1, d),
      "prompt_embedding": (1, prompt, d),
      "embeddings/patch_embeddings/projection/kernel": (2, 2, 3, d),
  }
  block_mean = {
      "embeddings/position_embeddings": lambda g2: g2.mean(axis=2, keepdims=True),
      "posembed_input/pos_embedding": lambda g2: g2.mean(axis=2, keepdims=True),
      "backbone/pos_embed": lambda g2: g2.mean(axis=3, keepdims=True),
      "embeddings/cls_token": lambda g2: g2.mean(keepdims=True),
      "embeddings/mask_token": lambda g2: g2.mean(keepdims=True),
      "prompt_embedding": lambda g2: g2.mean(axis=2, keepdims=True),
      "embeddings/patch_embeddings/projection/kernel": lambda g2: g2.mean(axis=(0, 1, 2), keepdims=True),
  }
  expected = {
      "embeddings/position_embeddings": (1, positions),
      "posembed_input/pos_embedding": (1, positions),
      "backbone/pos_embed": (1, side, side + 1),
      "embeddings/cls_token": (1, 1),
      "embeddings/mask_token": (1,),
      "prompt_embedding": (1, prompt),
      "embeddings/patch_embeddings/projection/kernel": (d,),
  }
  check(shapes, block_mean, dict.fromkeys(shapes, True), expected)


def test_keras_and_haiku_vision_layers():
  # Keras' LayerNorm/BatchNorm bias is `beta`, Haiku's `offset`, Swin's
  # relative_position_bias_table a bias to the logits: plain Adam, no decay
  # (the official "bias"). Keras' depthwise kernels [kh, kw, in, multiplier]
  # (DepthwiseConv2D, EfficientNet's dwconv, SeparableConv2D's
  # depthwise_kernel): one v per output channel, (in, multiplier); Flax's
  # grouped [kh, kw, 1, channels] the same. Keras' Conv2DTranspose
  # [kh, kw, out, in]: one v per output channel (axis 2); Flax's
  # ConvTranspose [kh, kw, in, out] per its last axis.
  c, m, o = 6, 2, 4
  shapes = {
      "vit_encoder/ln/beta": (c,),
      "transformer/layer_norm/offset": (c,),
      "stage_0/blocks_0/attn/relative_position_bias_table": (9, 3),
      "block2a_/block2a_dwconv2/kernel": (3, 3, c, 1),
      "block2_sepconv1/depthwise_kernel": (3, 3, c, m),
      "convnext/dwconv/kernel": (3, 3, 1, c),
      "mask_decoder/conv2d_transpose/kernel": (2, 2, o, c),
      "decoder/ConvTranspose_0/kernel": (2, 2, c, o),
  }
  block_mean = {
      "vit_encoder/ln/beta": lambda g2: g2,
      "transformer/layer_norm/offset": lambda g2: g2,
      "stage_0/blocks_0/attn/relative_position_bias_table": lambda g2: g2,
      "block2a_/block2a_dwconv2/kernel": lambda g2: g2.mean(axis=(0, 1), keepdims=True),
      "block2_sepconv1/depthwise_kernel": lambda g2: g2.mean(axis=(0, 1), keepdims=True),
      "convnext/dwconv/kernel": lambda g2: g2.mean(axis=(0, 1), keepdims=True),
      "mask_decoder/conv2d_transpose/kernel": lambda g2: g2.mean(axis=(0, 1, 3), keepdims=True),
      "decoder/ConvTranspose_0/kernel": lambda g2: g2.mean(axis=(0, 1, 2), keepdims=True),
  }
  decay = {k: len(s) >= 2 and "bias" not in k for k, s in shapes.items()}
  expected = {
      "vit_encoder/ln/beta": (c,),
      "transformer/layer_norm/offset": (c,),
      "stage_0/blocks_0/attn/relative_position_bias_table": (9, 3),
      "block2a_/block2a_dwconv2/kernel": (c, 1),
      "block2_sepconv1/depthwise_kernel": (c, m),
      "convnext/dwconv/kernel": (1, c),
      "mask_decoder/conv2d_transpose/kernel": (o,),
      "decoder/ConvTranspose_0/kernel": (o,),
  }
  check(shapes, block_mean, decay, expected)


def test_keras_and_haiku_multi_head_attention():
  # Keras' MultiHeadAttention (keras-hub's ViT: mha) keeps [in, heads,
  # head_dim] kernels; Haiku's (multi_head_attention) flat [in, heads*head_dim]:
  # query/key one v per head, value one per output neuron, with head_dim only.
  d, n, h = 12, 3, 4
  shapes = {
      "vit_encoder/transformer_block_0/mha/query/kernel": (d, n, h),
      "vit_encoder/transformer_block_0/mha/value/kernel": (d, n, h),
      "transformer/multi_head_attention/key/w": (d, n * h),
      "transformer/multi_head_attention/value/w": (d, n * h),
  }
  block_mean = {
      "vit_encoder/transformer_block_0/mha/query/kernel": lambda g2: g2.mean(axis=(0, 2), keepdims=True),
      "vit_encoder/transformer_block_0/mha/value/kernel": lambda g2: g2.mean(axis=0, keepdims=True),
      "transformer/multi_head_attention/key/w": lambda g2: g2.reshape(d, n, h).mean(axis=(0, 2), keepdims=True).repeat(h, 2).reshape(1, n * h),
      "transformer/multi_head_attention/value/w": lambda g2: g2.mean(axis=0, keepdims=True),
  }
  expected = {
      "vit_encoder/transformer_block_0/mha/query/kernel": (n,),
      "vit_encoder/transformer_block_0/mha/value/kernel": (n, h),
      "transformer/multi_head_attention/key/w": (n,),
      "transformer/multi_head_attention/value/w": (n * h,),
  }
  params, grads = random_case(shapes)
  ref, _ = numpy_adam_mini(params, grads, block_mean, dict.fromkeys(shapes, True))
  ours, nu = run_ours(nest(params), [nest(g) for g in grads], head_dim=h)
  assert {k: v.shape for k, v in flat(nu).items()} == expected
  assert_close(flat(ours), ref)


def test_head_dim_per_tower():
  # A vision tower with heads of 6 beside a text decoder with heads of 4
  # (PaliGemma 2's SigLIP, 72, beside Gemma 2's 128): head_dim as a mapping
  # from path patterns to sizes, first match wins. The heads-first einsum
  # needs none (no pattern matches it: its head size comes from its shape).
  d, vision_heads, vision_h, text_heads, text_h = 12, 2, 6, 3, 4
  shapes = {
      "image_encoder/block_0/attn/query_proj/kernel": (d, vision_heads * vision_h),
      "image_encoder/block_0/attn/key_proj/kernel": (d, vision_heads * vision_h),
      "decoder/layer_0/self_attn/q_proj/kernel": (d, text_heads * text_h),
      "decoder/layer_0/attn/q_einsum/w": (text_heads, d, text_h),
  }

  def per_head(n, h):
    return lambda g2: g2.reshape(d, n, h).mean(axis=(0, 2), keepdims=True).repeat(h, 2).reshape(1, n * h)

  block_mean = {
      "image_encoder/block_0/attn/query_proj/kernel": per_head(vision_heads, vision_h),
      "image_encoder/block_0/attn/key_proj/kernel": per_head(vision_heads, vision_h),
      "decoder/layer_0/self_attn/q_proj/kernel": per_head(text_heads, text_h),
      "decoder/layer_0/attn/q_einsum/w": lambda g2: g2.mean(axis=(1, 2), keepdims=True),
  }
  expected = {
      "image_encoder/block_0/attn/query_proj/kernel": (vision_heads,),
      "image_encoder/block_0/attn/key_proj/kernel": (vision_heads,),
      "decoder/layer_0/self_attn/q_proj/kernel": (text_heads,),
      "decoder/layer_0/attn/q_einsum/w": (text_heads,),
  }
  params, grads = random_case(shapes)
  ref, _ = numpy_adam_mini(params, grads, block_mean, dict.fromkeys(shapes, True))
  head_dim = {"image_encoder": vision_h, "self_attn": text_h}
  ours, nu = run_ours(nest(params), [nest(g) for g in grads], head_dim=head_dim)
  assert {k: v.shape for k, v in flat(nu).items()} == expected
  assert_close(flat(ours), ref)
  # One head size for both towers cuts the vision heads wrong where it
  # divides them (12 / 4 = 3 "heads"): the reason for the mapping.
  one = optax_mini.explain(nest(params), head_dim=text_h)
  assert {r.path: r.num_blocks for r in one.rows}["['image_encoder']['block_0']['attn']['key_proj']['kernel']"] == 3


def test_t5_attention_names():
  # T5 (HF, bonsai's UMT5): SelfAttention/EncDecAttention q, k, v, o, flat
  # [d_model, heads*d_kv] ("self.q(h).reshape(b, -1, n, c)"): q and k one v
  # per head, v per output neuron, o per output neuron.
  d, n, h = 12, 3, 4
  shapes = {
      "encoder/block/0/layer/0/SelfAttention/q/kernel": (d, n * h),
      "decoder/block/0/layer/1/EncDecAttention/k/kernel": (d, n * h),
      "decoder/block/0/layer/1/EncDecAttention/v/kernel": (d, n * h),
      "encoder/block/0/layer/0/SelfAttention/o/kernel": (n * h, d),
  }

  def per_head(g2):
    return g2.reshape(d, n, h).mean(axis=(0, 2), keepdims=True).repeat(h, 2).reshape(1, n * h)

  block_mean = {
      "encoder/block/0/layer/0/SelfAttention/q/kernel": per_head,
      "decoder/block/0/layer/1/EncDecAttention/k/kernel": per_head,
      "decoder/block/0/layer/1/EncDecAttention/v/kernel": lambda g2: g2.mean(axis=0, keepdims=True),
      "encoder/block/0/layer/0/SelfAttention/o/kernel": lambda g2: g2.mean(axis=0, keepdims=True),
  }
  expected = {
      "encoder/block/0/layer/0/SelfAttention/q/kernel": (n,),
      "decoder/block/0/layer/1/EncDecAttention/k/kernel": (n,),
      "decoder/block/0/layer/1/EncDecAttention/v/kernel": (n * h,),
      "encoder/block/0/layer/0/SelfAttention/o/kernel": (d,),
  }
  params, grads = random_case(shapes)
  ref, _ = numpy_adam_mini(params, grads, block_mean, dict.fromkeys(shapes, True))
  ours, nu = run_ours(nest(params), [nest(g) for g in grads], head_dim=h)
  assert {k: v.shape for k, v in flat(nu).items()} == expected
  assert_close(flat(ours), ref)


def test_internlm2_wqkv_grouped_per_key_value_head():
  # InternLM2's wqkv (PyTorch checkpoints, EasyDeL): the output is
  # (kv_heads, groups + 2, head_dim), each key/value head's query heads
  # first ('rearrange(qkv, "b q (h gs d) -> b q h gs d", gs=2 + groups)'):
  # every query and key head one v, every value neuron one.
  d, q_heads, kv_heads, h = 10, 4, 2, 3
  groups = q_heads // kv_heads
  width = kv_heads * (groups + 2) * h

  def block_mean(g2):
    out = np.empty_like(g2[:1])
    col = g2.mean(axis=0, keepdims=True)
    for j in range(kv_heads):
      base = j * (groups + 2) * h
      for head in range(groups + 1):  # the group's query heads, then its key head
        lo = base + head * h
        out[:, lo : lo + h] = col[:, lo : lo + h].mean()
      lo = base + (groups + 1) * h
      out[:, lo : lo + h] = col[:, lo : lo + h]  # its value neurons
    return out

  shapes = {"model/layers/0/attention/wqkv/kernel": (d, width)}
  params, grads = random_case(shapes)
  ref, _ = numpy_adam_mini(params, grads, {k: block_mean for k in shapes}, dict.fromkeys(shapes, True))
  ours, nu = run_ours(nest(params), [nest(g) for g in grads], head_dim=h,
                      blocks=optax_mini.BlockRules(num_heads=q_heads, num_kv_heads=kv_heads))
  assert_close(flat(ours), ref)
  report = optax_mini.explain(nest(params), head_dim=h,
                              blocks=optax_mini.BlockRules(num_heads=q_heads, num_kv_heads=kv_heads))
  assert report.num_v == q_heads + kv_heads + kv_heads * h


def test_maxtext_multi_head_latent_attention():
  # MaxText's MLA (DeepSeek), scanned ([in, layers, ...]): wq_b
  # [q_lora_rank, heads, qk_head_dim] one v per head; wkv_b [kv_lora_rank,
  # heads, nope + v] one per (head, output neuron): never across heads;
  # wkv_a [embed, kv_lora_rank + rope] per neuron; out [heads, v, embed].
  rank, layers, n, qk, nope, v, emb = 6, 2, 3, 5, 2, 4, 8
  shapes = {
      "decoder/layers/self_attention/wq_b/kernel": (rank, layers, n, qk),
      "decoder/layers/self_attention/wkv_b/kernel": (rank, layers, n, nope + v),
      "decoder/layers/self_attention/wkv_a/kernel": (emb, layers, rank + 1),
      "decoder/layers/self_attention/out/kernel": (n, layers, v, emb),
  }
  block_mean = {
      "decoder/layers/self_attention/wq_b/kernel": lambda g2: g2.mean(axis=(0, 3), keepdims=True),
      "decoder/layers/self_attention/wkv_b/kernel": lambda g2: g2.mean(axis=0, keepdims=True),
      "decoder/layers/self_attention/wkv_a/kernel": lambda g2: g2.mean(axis=0, keepdims=True),
      "decoder/layers/self_attention/out/kernel": lambda g2: g2.mean(axis=(0, 2), keepdims=True),
  }
  expected = {
      "decoder/layers/self_attention/wq_b/kernel": (layers, n),
      "decoder/layers/self_attention/wkv_b/kernel": (layers, n, nope + v),
      "decoder/layers/self_attention/wkv_a/kernel": (layers, rank + 1),
      "decoder/layers/self_attention/out/kernel": (layers, emb),
  }
  check(shapes, block_mean, dict.fromkeys(shapes, True), expected,
        blocks=optax_mini.BlockRules(stacked={"decoder/layers": 1}))
