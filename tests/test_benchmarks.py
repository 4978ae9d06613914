"""`python benchmarks/run.py` still runs and reports what the README quotes.

Only the shapes-only sections run here (memory, FSDP; about 10 s): their
figures come from ``jax.eval_shape`` and are checked against the paper's
published Llama-2-7B numbers, not against our own earlier output. The timed
sections are measured by hand (tests never assert wall-clock time).
"""

from __future__ import annotations

import os
import re

import pytest

from benchmarks import convergence, run
from benchmarks.common import settings


def test_memory_and_fsdp_sections_write_results_and_plot(tmp_path):
  committed = os.path.join(os.path.dirname(run.__file__), "state_memory.png")
  before = os.stat(committed).st_mtime_ns if os.path.exists(committed) else None
  out = tmp_path / "nested" / "RESULTS.md"  # --out's directory is created
  text = run.main(["--quick", "--only", "memory,fsdp", "--out", str(out)])
  assert out.read_text() == text
  assert (out.parent / "state_memory.png").stat().st_size > 0
  assert "**Machine:**" in text and "jax " in text
  # Llama-2-7B, paper: AdamW 53.92 GB -> Adam-mini 26.96 GB (m + v, float32).
  match = re.search(r"AdamW \*\*([\d.]+) GB\*\* -> Adam-mini \*\*([\d.]+) GB\*\*", text)
  assert match, text
  adamw, mini = map(float, match.groups())
  assert adamw == pytest.approx(53.92, abs=0.02)
  assert mini == pytest.approx(26.96, abs=0.01)
  # bf16 m halves m; v is ~1.16M float32 values.
  bf16 = float(re.search(r"\*\*([\d.]+) GB\*\* with bf16 m", text).group(1))
  assert bf16 == pytest.approx(26.96 / 2, abs=0.01)
  # FSDP over 8 devices: per-device state is ~1/8 of the whole.
  row = re.search(r"^\| 8 \| [\d.]+ \| ([\d.]+) \| ([\d.]+) \|", text, re.MULTILINE)
  assert row, text
  assert float(row.group(1)) == pytest.approx(adamw / 8, rel=0.01)
  assert float(row.group(2)) == pytest.approx(mini / 8, rel=0.01)
  # Plots go beside --out: the committed ones are left alone.
  after = os.stat(committed).st_mtime_ns if os.path.exists(committed) else None
  assert after == before


def test_unknown_section_is_refused(capsys):
  with pytest.raises(SystemExit):
    run.main(["--only", "memory,sped"])
  assert "sped" in capsys.readouterr().err


def test_convergence_runs_do_not_depend_on_jobs(monkeypatch):
  variants = {"adam_mini": ["--optimizer", "adam_mini", "--preset", "tiny"]}
  monkeypatch.setattr(settings, "jobs", 1)
  serial = convergence._train_runs(variants, steps=3, seeds=(0, 1))
  monkeypatch.setattr(settings, "jobs", 2)
  parallel = convergence._train_runs(variants, steps=3, seeds=(0, 1))
  assert serial == parallel
  finals, curves = serial
  assert len(finals["adam_mini"]) == 2 and finals["adam_mini"][0] != finals["adam_mini"][1]
  assert [step for step, _ in curves["adam_mini"][0]][-1] == 3
