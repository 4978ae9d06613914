"""Tests of the example's data, training loop, resume and comparison.

Runs use a few steps of short sequences so the file stays well under a
minute on two CPU cores; they check behaviour a user relies on (the loss
goes down, resume is exact, the files have their fields), never timings.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

# The example is not an installed package: import it from the checkout.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from examples.llama import compare, data, train  # noqa: E402
from examples.llama import model as model_lib  # noqa: E402

# Few, short steps: enough for the byte distribution to be learned (the
# loss falls well below ln 256) in a few seconds.
FAST = [
  "--steps",
  "24",
  "--batch-size",
  "8",
  "--seq-len",
  "32",
  "--warmup",
  "4",
  "--lr",
  "1e-2",
  "--log-every",
  "4",
  "--eval-every",
  "12",
  "--eval-batches",
  "2",
  "--quiet",
]
SUMMARY_FIELDS = {
  "optimizer": str,
  "steps": int,
  "final_eval_loss": float,
  "tokens_per_second": float,
  "opt_state_bytes": int,
  "param_count": int,
  "wall_seconds": float,
}


def _metrics(run_dir) -> list[dict]:
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


# ---------------------------------------------------------------- data


def test_split_is_deterministic_and_holds_out_the_tail():
  a = data.load_corpus(seq_len=128)
  b = data.load_corpus(seq_len=128)
  np.testing.assert_array_equal(a.train, b.train)
  np.testing.assert_array_equal(a.held_out, b.held_out)
  text = data.default_text().encode("utf-8")
  assert bytes(a.train) + bytes(a.held_out) == text
  assert len(a.held_out) == math.ceil(0.1 * len(text))
  assert len(text) > 400_000  # pydoc_data.topics is ~0.47 MB


def test_stdlib_corpus_does_not_run_out_and_holds_out_whole_files(tmp_path):
  corpus = data.load_corpus(seq_len=128, corpus="stdlib")
  again = data.load_corpus(seq_len=128, corpus="stdlib")
  np.testing.assert_array_equal(corpus.train, again.train)
  total = len(corpus.train) + len(corpus.held_out)
  assert total > 10_000_000  # > 10 MB: 1000 default steps (1000 x 16 x 256 bytes) are < 1 epoch
  assert 0.03 < len(corpus.held_out) / total < 0.2
  # Whole files: every held-out file is in the held-out part, none in training.
  import sysconfig
  root = sysconfig.get_paths()["stdlib"]
  files = data.stdlib_files(root)
  assert not any("/test/" in f"/{f}" or os.path.basename(f).startswith("test_") for f in files)
  held = [f for f in files if data.is_held_out(f)]
  kept = [f for f in files if not data.is_held_out(f)]
  assert held and kept
  train, held_out = bytes(corpus.train), bytes(corpus.held_out)
  for rel in held[:5]:
    with open(os.path.join(root, rel), "rb") as f:
      body = f.read()
    if len(body) > 2000:
      assert body in held_out and body not in train
  # A file tree of our own: the split is by file, by a hash of the path.
  for name in ("a.py", "b.py", "c.py", "pkg/d.py", "test/e.py", "test_f.py"):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {name}\n" * 20)
  assert data.stdlib_files(str(tmp_path)) == ["a.py", "b.py", "c.py", os.path.join("pkg", "d.py")]


def test_train_batches_are_a_function_of_seed_and_step():
  tokens = data.load_corpus(seq_len=16).train

  def batch(seed, step):
    return data.train_batch(tokens, seed=seed, step=step, batch_size=4, seq_len=16)

  x, y = batch(0, 7)
  np.testing.assert_array_equal(x, batch(0, 7)[0])
  np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # targets shift by one
  assert not np.array_equal(x, batch(0, 8)[0])
  assert not np.array_equal(x, batch(1, 7)[0])
  assert x.shape == y.shape == (4, 16) and x.dtype == np.int32


def test_eval_batches_are_fixed_and_inside_the_held_out_text():
  held_out = data.load_corpus(seq_len=32).held_out
  batches = data.eval_batches(held_out, batch_size=4, seq_len=32, max_batches=3)
  again = data.eval_batches(held_out, batch_size=4, seq_len=32, max_batches=3)
  assert len(batches) == 3
  for (x, y), (x2, _) in zip(batches, again):
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
  held = bytes(held_out)
  for x, y in batches:
    for row_x, row_y in zip(x, y):
      window = bytes(row_x.astype(np.uint8)) + bytes([row_y[-1]])
      assert window in held


@pytest.mark.parametrize(
  "content, message",
  [
    (None, "no such file"),
    (b"", "is empty"),
    (b"far too short", "has 13 bytes"),
    (b"\xff\xfe latin-1 \xe9", "not UTF-8"),
  ],
)
def test_text_file_errors_name_the_file_and_the_fix(tmp_path, content, message):
  path = tmp_path / "corpus.txt"
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(data.CorpusError, match=message) as error:
    train.main(["--text", str(path), "--out", str(tmp_path / "run"), "--quiet"])
  text = str(error.value)
  assert str(path) in text
  assert "--text" in text or "--seq-len" in text


def test_text_error_on_the_command_line_is_one_line_not_a_traceback(tmp_path):
  missing = tmp_path / "missing.txt"
  result = subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, "examples", "llama", "train.py"),
      "--text",
      str(missing),
      "--out",
      str(tmp_path / "run"),
    ],
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert result.returncode != 0
  assert f"error: --text {missing}: no such file" in result.stderr
  assert "Traceback" not in result.stderr


def test_user_text_file_trains(tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_text("All work and no play makes Jack a dull boy. " * 60)
  summary = train.main(
    [
      *FAST,
      "--steps",
      "4",
      "--eval-every",
      "4",
      "--text",
      str(path),
      "--out",
      str(tmp_path / "run"),
    ]
  )
  assert summary["corpus"] == str(path)
  assert math.isfinite(summary["final_eval_loss"])


# ------------------------------------------------------ training runs


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
  """One compare.py run: both optimizers, same flags (shared by tests)."""
  out = tmp_path_factory.mktemp("compare")
  result = compare.main(["--out", str(out), *FAST, "--checkpoint-every", "0"])
  return out, result


def test_loss_drops_for_both_optimizers(comparison):
  out, result = comparison
  for name in ("adamw", "adam_mini"):
    records = _metrics(out / name)
    first, last = records[0]["train_loss"], records[-1]["train_loss"]
    assert first > math.log(256) - 0.5  # starts near uniform over bytes
    assert last < first - 1.5, (name, first, last)
    assert result["summaries"][name]["final_eval_loss"] < math.log(256) - 1.5


def test_both_optimizers_see_the_same_init_and_data(comparison):
  out, _ = comparison
  adamw, mini = _metrics(out / "adamw"), _metrics(out / "adam_mini")
  assert [r["step"] for r in adamw] == [r["step"] for r in mini]
  # The step-1 loss is computed before any update: equal init and batch give
  # equal losses; after that the optimizers (and only they) differ.
  assert adamw[0]["step"] == 1
  assert adamw[0]["train_loss"] == mini[0]["train_loss"]
  assert adamw[-1]["train_loss"] != mini[-1]["train_loss"]


def test_summary_json_fields(comparison):
  out, _ = comparison
  config = model_lib.PRESETS["tiny"]
  attn = config.dim * config.head_dim * 2 * (config.n_heads + config.n_kv_heads)
  expected_params = (
    2 * 256 * config.dim
    + config.dim
    + config.n_layers * (attn + 3 * config.dim * config.hidden_dim + 2 * config.dim)
  )
  summaries = {}
  for name in ("adamw", "adam_mini"):
    with open(out / name / "summary.json") as f:
      summary = json.load(f)
    summaries[name] = summary
    for field, kind in SUMMARY_FIELDS.items():
      assert isinstance(summary[field], kind), (field, summary[field])
    assert summary["optimizer"] == name
    assert summary["steps"] == 24
    assert summary["param_count"] == expected_params
    assert summary["tokens_per_second"] > 0 and summary["wall_seconds"] > 0
    evals = [r for r in _metrics(out / name) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [12, 24]
    assert summary["final_eval_loss"] == evals[-1]["eval_loss"]
  # AdamW keeps m and v (2 x float32 per parameter); Adam-mini about half.
  assert summaries["adamw"]["opt_state_bytes"] >= 8 * expected_params
  ratio = summaries["adam_mini"]["opt_state_bytes"] / summaries["adamw"]["opt_state_bytes"]
  assert 0.49 < ratio < 0.52


def test_metrics_jsonl_fields(comparison):
  out, _ = comparison
  records = _metrics(out / "adam_mini")
  assert [r["step"] for r in records] == [1, 4, 8, 12, 16, 20, 24]
  schedule = train.make_schedule(train.build_parser().parse_args(FAST))
  for r in records:
    assert {"step", "train_loss", "lr", "tokens_per_second"} <= set(r)
    # Null only for step 1, whose time is compilation.
    assert (r["tokens_per_second"] is None) == (r["step"] == 1)
    assert math.isfinite(r["train_loss"])
    assert r["lr"] == pytest.approx(float(schedule(r["step"] - 1)))
  assert max(r["lr"] for r in records) <= 1e-2


@pytest.mark.parametrize("steps", [1000, 150, 3])
def test_default_warmup_is_a_tenth_of_the_steps(steps):
  args = train.build_parser().parse_args(["--steps", str(steps), "--lr", "2e-3"])
  schedule = train.make_schedule(args)
  warmup = max(steps // 10, 1)
  assert float(schedule(0)) == 0.0
  assert float(schedule(warmup)) == pytest.approx(2e-3)
  if warmup > 1:
    assert float(schedule(warmup - 1)) < 2e-3
  explicit = train.make_schedule(train.build_parser().parse_args(["--steps", str(steps), "--warmup", "2"]))
  assert float(explicit(2)) == pytest.approx(2e-3)


def test_compare_writes_plot_and_table(comparison):
  out, result = comparison
  with open(out / "loss_curves.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  table = (out / "comparison.md").read_text()
  assert table == result["table"]
  rows = [line for line in table.splitlines() if line.startswith("| Adam")]
  assert [row.split("|")[1].strip() for row in rows] == ["AdamW", "Adam-mini"]
  mini = result["summaries"]["adam_mini"]
  assert f"{mini['final_eval_loss']:.4f}" in rows[1]
  assert rows[0].rstrip().endswith("| 1.000x |")


def _restore_params(run_dir, step):
  manager = ocp.CheckpointManager(os.path.join(run_dir, "checkpoints"))
  assert step in manager.all_steps()
  restored = manager.restore(step)
  manager.close()
  return restored


@pytest.mark.parametrize("mu_dtype", ["float32", "int8"])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, mu_dtype):
  flags = [
    *FAST,
    "--mu-dtype",
    mu_dtype,
    "--steps",
    "12",
    "--eval-every",
    "6",
    "--log-every",
    "2",
    "--checkpoint-every",
    "3",
  ]
  straight, split = tmp_path / "straight", tmp_path / "split"
  full = train.main([*flags, "--out", str(straight)])
  part = train.main([*flags, "--out", str(split), "--stop-at", "7"])
  assert part["steps"] == 7
  resumed = train.main([*flags, "--out", str(split), "--resume"])

  def losses(run_dir):
    return [{k: v for k, v in r.items() if k != "tokens_per_second"} for r in _metrics(run_dir)]

  assert losses(straight) == losses(split)
  assert resumed["final_eval_loss"] == full["final_eval_loss"]
  a, b = _restore_params(straight, 12), _restore_params(split, 12)
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 20  # params and optimizer state
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  if mu_dtype == "int8":  # the checkpoint holds the codes and their scales
    assert any(np.asarray(x).dtype == np.int8 for x in leaves_a)


def test_resume_refuses_changed_flags_and_fresh_runs_refuse_old_dirs(tmp_path):
  flags = [*FAST, "--steps", "2", "--out", str(tmp_path)]
  train.main(flags)
  with pytest.raises(FileExistsError, match="--resume"):
    train.main(flags)
  with pytest.raises(ValueError, match="lr"):
    train.main([*flags, "--resume", "--lr", "0.5"])


def test_per_element_ablation_flag():
  from flax import nnx

  import optax_mini

  args = train.build_parser().parse_args(["--per-element", "value,attn_out", "--value-as-one-block"])
  blocks = train.adam_mini_blocks(args)
  params = nnx.to_pure_dict(nnx.state(model_lib.Llama(model_lib.PRESETS["tiny"]), nnx.Param))
  specs = optax_mini.block_specs(params, head_dim=32, blocks=blocks)
  attn = specs["layers"][0]["self_attn"]
  shape = params["layers"][0]["self_attn"]["v_proj"]["kernel"].shape
  assert attn["v_proj"]["kernel"].v_shape(shape) == shape  # plain Adam: one v per element
  assert attn["q_proj"]["kernel"].role == "heads [q_proj]"  # the rest untouched
  with pytest.raises(ValueError, match="--per-element"):
    train.adam_mini_blocks(train.build_parser().parse_args(["--per-element", "values"]))


def test_per_head_and_per_neuron_variant_flags():
  from flax import nnx

  import optax_mini

  config = model_lib.PRESETS["tiny"]
  params = nnx.to_pure_dict(nnx.state(model_lib.Llama(config), nnx.Param))

  def v_shapes(flags):
    blocks = train.adam_mini_blocks(train.build_parser().parse_args(flags))
    specs = optax_mini.block_specs(params, head_dim=config.head_dim, blocks=blocks)
    attn, shapes = specs["layers"][0]["self_attn"], params["layers"][0]["self_attn"]
    return {k: attn[k]["kernel"].v_shape(shapes[k]["kernel"].shape) for k in attn}

  default = v_shapes([])
  per_head = v_shapes(["--per-head", "value,attn_out"])
  per_neuron = v_shapes(["--per-neuron", "heads"])
  # From the config: one v per (kv) head instead of per output neuron, and
  # one per output neuron instead of per head; the other kernels untouched.
  assert default["v_proj"] == (config.n_kv_heads * config.head_dim,) and default["o_proj"] == (config.dim,)
  assert per_head["v_proj"] == (config.n_kv_heads,) and per_head["o_proj"] == (config.n_heads,)
  assert per_head["q_proj"] == default["q_proj"] == (config.n_heads,)
  assert per_neuron["q_proj"] == (config.n_heads * config.head_dim,)
  assert per_neuron["k_proj"] == (config.n_kv_heads * config.head_dim,)
  assert per_neuron["v_proj"] == default["v_proj"]
  with pytest.raises(ValueError, match="--per-head"):
    train.adam_mini_blocks(train.build_parser().parse_args(["--per-head", "heads"]))
  with pytest.raises(ValueError, match="pick one"):
    train.adam_mini_blocks(train.build_parser().parse_args(["--per-element", "heads", "--per-neuron", "heads"]))
