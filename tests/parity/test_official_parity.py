"""Parity with the official PyTorch Adam-mini (PyPI ``adam-mini`` 1.1.1).

A LLaMA-like model with GQA, q/k/v biases, weight decay and b2=0.95 is trained
for 6 steps by the official optimizer (``make_fixture.py``). We replay its
recorded gradients, transposed into Flax layout, through ``optax_mini.adam_mini``
and compare every parameter after every step. The same gradients are also
replayed untransposed, as the flat dict of PyTorch names and layouts that
``safetensors.flax.load_file`` gives for a PyTorch checkpoint, under
``BlockRules(weight_layout="torch")``. The committed fixture makes the test
run without torch; with torch and adam-mini installed the same comparison also
runs live against a fresh official run.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_mini

FIXTURE = pathlib.Path(__file__).with_name("official_llama_gqa.npz")
MAX_RELATIVE_DIFFERENCE = 1e-5


def _flax_path(torch_name: str, ndim: int) -> tuple[str, ...]:
  """Torch name -> Flax/NNX path; weights of Linear layers become kernels."""
  *parents, leaf = torch_name.split(".")
  if leaf == "bias":
    return (*parents, "bias")
  if parents[-1] == "embed_tokens":
    return (*parents, "embedding")
  if ndim == 1:
    return (*parents, "scale")
  return (*parents, "kernel")


def _to_flax(name: str, x: np.ndarray) -> np.ndarray:
  # nn.Linear weight is [out, in]; Flax kernels are [in, out]. Embedding tables
  # are [vocab, dim] in both.
  if x.ndim == 2 and not name.endswith("embed_tokens.weight"):
    return x.T
  return x


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def _replay(data: dict[str, np.ndarray], layout: str = "flax"):
  """Replays the official run; ``layout="torch"``: as a flat dict keyed by the
  PyTorch names, arrays as PyTorch stores them (a safetensors checkpoint)."""
  names = sorted(k[len("init/"):] for k in data if k.startswith("init/"))
  torch = layout == "torch"
  if torch:
    paths = {n: (n,) for n in names}
  else:
    paths = {n: _flax_path(n, data[f"init/{n}"].ndim) for n in names}
  convert = (lambda n, x: x) if torch else _to_flax

  def tree(prefix: str) -> dict:
    out: dict = {}
    for n in names:
      _set(out, paths[n], jnp.asarray(convert(n, data[f"{prefix}{n}"])))
    return out

  steps = int(data["meta/steps"])
  tx = optax_mini.adam_mini(
      learning_rate=float(data["meta/lr"]),
      b1=float(data["meta/b1"]),
      b2=float(data["meta/b2"]),
      eps=float(data["meta/eps"]),
      weight_decay=float(data["meta/weight_decay"]),
      head_dim=int(data["meta/head_dim"]),
      blocks=optax_mini.BlockRules(weight_layout="torch") if torch else None,
  )
  params = tree("init/")
  state = tx.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  worst = 0.0
  for t in range(steps):
    params, state = step(params, state, tree(f"grad/{t}/"))
    for n in names:
      ours = np.asarray(_get(params, paths[n]))
      theirs = convert(n, data[f"param/{t}/{n}"])
      rel = np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))
      worst = max(worst, rel)
      assert rel <= MAX_RELATIVE_DIFFERENCE, (t, n, rel)
      np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=2e-6, err_msg=f"{n} step {t}")
  return names, paths, state, worst


def _check_partition(data, names, paths, state) -> None:
  nu = state[0].nu
  for n in names:
    official = tuple(int(d) for d in data[f"vshape/{n}"])
    # The official code keeps a trailing 1 on per-row/per-head blocks.
    if len(official) == 2 and official[1] == 1:
      official = official[:1]
    assert tuple(_get(nu, paths[n]).shape) == official, n


def test_matches_committed_official_fixture():
  data = dict(np.load(FIXTURE))
  assert str(data["meta/adam_mini_version"]) == "1.1.1"
  assert int(data["meta/n_kv_heads"]) < int(data["meta/n_heads"])  # GQA is covered
  assert float(data["meta/b2"]) != 0.999 and float(data["meta/weight_decay"]) > 0
  names, paths, state, worst = _replay(data)
  assert int(data["meta/steps"]) >= 5
  assert any("bias" in n for n in names)
  _check_partition(data, names, paths, state)
  assert worst <= MAX_RELATIVE_DIFFERENCE


def test_pytorch_checkpoint_layout_matches_committed_official_fixture():
  """The official run's own tree: PyTorch names, nn.Linear weights [out, in]."""
  data = dict(np.load(FIXTURE))
  names, paths, state, worst = _replay(data, layout="torch")
  assert all(paths[n] == (n,) for n in names) and any(n.endswith("q_proj.weight") for n in names)
  _check_partition(data, names, paths, state)
  assert worst <= MAX_RELATIVE_DIFFERENCE


def test_pytorch_checkpoint_layout_must_be_declared():
  """Undeclared, a square [out, in] weight fits both readings: an error that
  names the leaf and the fix, never a guess."""
  data = dict(np.load(FIXTURE))
  params = {n[len("init/"):]: jnp.asarray(data[n]) for n in data if n.startswith("init/")}
  tx = optax_mini.adam_mini(1e-3, head_dim=int(data["meta/head_dim"]))
  with pytest.raises(ValueError, match=r"\['lm_head.weight'\].*weight_layout='torch'"):
    tx.init(params)


@pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("adam_mini") is None,
    reason="live parity needs `pip install torch==2.13.0 adam-mini==1.1.1` (the committed "
    "fixture covers the same comparison without them)",
)
def test_matches_official_live():
  sys.path.insert(0, str(pathlib.Path(__file__).parent))
  try:
    import make_fixture
  finally:
    sys.path.pop(0)
  data = make_fixture.run_official()
  for layout in ("flax", "torch"):
    names, paths, state, worst = _replay(data, layout)
    _check_partition(data, names, paths, state)
    assert worst <= MAX_RELATIVE_DIFFERENCE, layout
