"""`benchmarks/study.py`: which runs it asks for and what it reports.

Training is replaced by a table of made-up losses (the study's own runs take
hours), so this checks the study's logic: the grid, the best settings, the
seeds at them, the ablation rows, the gaps (against ``statistics`` here),
the cache, and that ``--report-only`` never trains.
"""

from __future__ import annotations

import statistics

import pytest

from benchmarks import study

LRS, WARMUPS, SEEDS = (1e-3, 2e-3), (30, 100), (0, 1)


def fake_loss(flags: list[str]) -> float:
  """AdamW best at lr 2e-3 / warmup 100, Adam-mini at 1e-3 / warmup 100;
  the per-neuron ablation halfway; seeds move the loss a little."""
  f = dict(zip(flags[::2], flags[1::2]))
  optimizer, lr, warmup, seed = f["--optimizer"], float(f["--lr"]), int(f["--warmup"]), int(f["--seed"])
  base = {("adamw", 2e-3): 1.40, ("adamw", 1e-3): 1.45,
          ("adam_mini", 1e-3): 1.42, ("adam_mini", 2e-3): 1.44}[(optimizer, lr)]
  base += 0.0 if warmup == 100 else 0.05
  if "--per-neuron" in flags:
    base -= 0.03
  if "--value-as-one-block" in flags:
    base += 0.01
  return base + 0.002 * seed


@pytest.fixture
def trained(monkeypatch):
  calls = []

  def fake_train(flags, out_dir):
    cached = study._cached(flags, out_dir)
    if cached is not None:
      return cached
    calls.append(flags)
    result = {"flags": flags, "final_eval_loss": fake_loss(flags), "seconds": 1.0,
              "train_curve": [(1, 5.0), (10, 2.0)], "eval_curve": [(5, 3.0), (10, fake_loss(flags))]}
    study._write(flags, out_dir, result)
    return result

  monkeypatch.setattr(study, "_train", fake_train)
  return calls


def args(tmp_path, *extra):
  return ["--out", str(tmp_path), "--lrs", ",".join(map(str, LRS)), "--warmups", ",".join(map(str, WARMUPS)),
          "--seeds", ",".join(map(str, SEEDS)), "--ablations", "per_neuron:heads", *extra]


def test_grid_best_settings_gaps_and_ablation(tmp_path, trained):
  text = study.main(args(tmp_path))
  flags = [dict(zip(f[::2], f[1::2])) for f in trained]
  # Grid: both optimizers, every lr x warmup, seed 0.
  grid = {(f["--optimizer"], float(f["--lr"]), int(f["--warmup"])) for f in flags if f["--seed"] == "0"}
  assert {(o, lr, w) for o in ("adamw", "adam_mini") for lr in LRS for w in WARMUPS} <= grid
  assert "Best settings (seed 0): AdamW lr 0.002 warmup 100; Adam-mini lr 0.001 warmup 100." in text
  adamw = [1.40 + 0.002 * s for s in SEEDS]
  mini = [1.42 + 0.002 * s for s in SEEDS]
  drop_in = [1.44 + 0.002 * s for s in SEEDS]
  neuron = [1.44 - 0.03 + 0.002 * s for s in SEEDS]

  def row(xs):
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}"

  def pct(a, b):
    return f"{100 * (statistics.mean(a) / statistics.mean(b) - 1):+.2f} %"

  assert f"| AdamW at its best | {row(adamw)} | |" in text
  assert f"| Adam-mini at its best | {row(mini)} | {pct(mini, adamw)} |" in text
  assert f"| Adam-mini as a drop-in (AdamW's best setting) | {row(drop_in)} | {pct(drop_in, adamw)} |" in text
  # The ablation runs at AdamW's best setting, over the seeds.
  assert f"| heads per neuron | {row(neuron)} | {pct(neuron, adamw)} |" in text
  assert (tmp_path / "STUDY_tiny_stdlib.md").read_text() == text
  assert (tmp_path / "study_tiny_stdlib.png").stat().st_size > 0
  # Everything is cached: a second invocation trains nothing, reports the same.
  count = len(trained)
  assert study.main(args(tmp_path)).split("\n")[3:] == text.split("\n")[3:]
  assert len(trained) == count


def test_report_only_never_trains(tmp_path, trained):
  with pytest.raises(SystemExit):
    study.main(args(tmp_path, "--report-only"))
  assert not trained
  study.main(args(tmp_path, "--no-ablation"))
  count = len(trained)
  text = study.main(args(tmp_path, "--report-only"))  # the ablation row is marked, not run
  assert len(trained) == count
  assert "| heads per neuron | not run | |" in text


def test_ablation_seeds_and_partly_cached_rows(tmp_path, trained):
  # The ablation on seed 0 only: one run, compared with AdamW's seed 0.
  text = study.main(args(tmp_path, "--ablation-seeds", "0"))
  neuron = [run for run in trained if "--per-neuron" in run]
  assert [dict(zip(f[::2], f[1::2]))["--seed"] for f in neuron] == ["0"]
  adamw0, neuron0 = 1.40, 1.44 - 0.03
  assert f"| heads per neuron | {neuron0:.4f} | {100 * (neuron0 / adamw0 - 1):+.2f} % |" in text
  # Reported over both seeds before seed 1 is run: the row says which it has.
  text = study.main(args(tmp_path, "--report-only"))
  assert f"| heads per neuron (seeds [0] only) | {neuron0:.4f} | {100 * (neuron0 / adamw0 - 1):+.2f} % |" in text
  with pytest.raises(SystemExit):
    study.main(args(tmp_path, "--ablation-seeds", "0,7"))  # not one of --seeds


def test_bad_ablation_row_is_refused(tmp_path, capsys):
  with pytest.raises(SystemExit):
    study.main(["--out", str(tmp_path), "--ablations", "per_column:heads"])
  assert "per_column" in capsys.readouterr().err
