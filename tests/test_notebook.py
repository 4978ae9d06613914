"""The Colab quickstart runs top to bottom (a few-step run) and is stored stripped."""

from __future__ import annotations

import os
import pathlib
import re

import pytest

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
nbformat = pytest.importorskip("nbformat", reason="the notebook test needs the test extras (nbformat, nbclient, ipykernel)")
nbclient = pytest.importorskip("nbclient", reason="the notebook test needs the test extras (nbformat, nbclient, ipykernel)")


def assert_stored_stripped(path: pathlib.Path) -> None:
  nb = nbformat.read(path, as_version=4)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, "strip outputs before committing"


def run_notebook(path: pathlib.Path, monkeypatch) -> tuple[str, object]:
  """Executes a notebook top to bottom (a few-step run); its text output and cells."""
  monkeypatch.setenv("OPTAX_MINI_QUICK", "1")
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
  client.execute(env=dict(os.environ))
  text = "\n".join(
      out.get("text", "") + "".join(out.get("data", {}).get("text/plain", ""))
      for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
  )
  return text, nb


def test_committed_notebook_has_no_outputs():
  assert_stored_stripped(NOTEBOOK)


def test_quickstart_runs(monkeypatch):
  text, nb = run_notebook(NOTEBOOK, monkeypatch)
  assert "heads [q_proj]" in text  # the explain table
  assert "v entries" in text
  assert "Adam-mini" in text and "AdamW" in text  # the comparison table
  assert "Llama-2-7B" in text and "0.500x" in text  # 7B: half of AdamW's state
  assert "'Adam-mini, int8 m': '0.127x'" in text  # 7B: an eighth, with an 8-bit m
  assert re.search(r"Adam-mini, int8 m +held-out \d", text)  # the int8 run trained and reported
  images = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs if "image/png" in out.get("data", {})]
  assert len(images) >= 3  # loss curves, the memory bar chart, float32 m vs int8 m


YOUR_MODEL = NOTEBOOK.parent / "your_model.ipynb"


def test_your_model_notebook_is_stored_stripped():
  assert_stored_stripped(YOUR_MODEL)


def test_your_model_notebook_runs(monkeypatch):
  pytest.importorskip(
      "transformers", reason="part 4 trains a Hugging Face Flax GPT-2: needs transformers==4.57.6 (the test extras)"
  )
  text, _ = run_notebook(YOUR_MODEL, monkeypatch)
  assert "fused k|v [kv_einsum/w]" in text  # gemma: each part's blocks
  assert "363,719" in text  # Gemma 3 270M's blocks, as the README's table says
  assert "reverse_embeddings" in text and "neuron [reverse_embeddings]" in text  # keras-hub
  assert "ValueError:" in text and "num_heads" in text  # the ambiguity, and how to settle it
  assert "weight_layout='torch'" in text  # a PyTorch checkpoint's [out, in] weights
  assert "v entries: PyTorch checkpoint 1,470,273, HF Flax 1,470,273" in text
  assert "fused q|k|v [c_attn]" in text  # HF GPT-2's [out, in] fused kernel
  assert "Adam-mini  first loss" in text and "AdamW      first loss" in text
