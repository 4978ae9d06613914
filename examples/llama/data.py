"""Byte-level training data that is already on every machine.

Tokens are the UTF-8 bytes of a text (vocabulary 256, no tokenizer to
download). Two corpora ship with every Python install, so the example runs
offline (``--corpus``):

* ``pydoc`` (the default): CPython's ``pydoc_data.topics``, ~0.47 MB of English
  reference documentation. Small: 1000 steps of the example's default batch
  are ~5 epochs of it, so long runs measure overfitting as much as optimisation.
* ``stdlib``: the Python sources of CPython's standard library, test suites
  excluded (~12 MB on CPython 3.11): data that does not run out (1000 default
  steps are well under one epoch). Whole files are held out (about one in
  ten, chosen by a hash of the file's path), so no held-out line is ever seen
  in training. The file set differs between Python versions.

``--text FILE`` swaps in any UTF-8 file; there (and for ``pydoc``) the last
``HELD_OUT_FRACTION`` of the bytes is held out. Train batches are a pure
function of ``(seed, step)``, so a run resumed from a checkpoint sees exactly
the batches an uninterrupted run would have.

Example:
  >>> from examples.llama import data
  >>> corpus = data.load_corpus(seq_len=64)
  >>> inputs, targets = data.train_batch(corpus.train, seed=0, step=0,
  ...                                    batch_size=4, seq_len=64)
  >>> inputs.shape, bool((inputs[:, 1:] == targets[:, :-1]).all())
  ((4, 64), True)
"""

from __future__ import annotations

import dataclasses
import math
import os
import sysconfig
import zlib

import numpy as np

# The tail is held out (not a random sample of windows) so that no held-out
# byte ever appears inside a training window.
HELD_OUT_FRACTION = 0.1
DEFAULT_SOURCE = "pydoc_data.topics"
CORPORA = ("pydoc", "stdlib")
# Standard-library directories that are test suites (or not the stdlib).
_NOT_STDLIB = frozenset({"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"})


class CorpusError(ValueError):
  """The training text cannot be used; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Byte tokens split into a training part and a held-out tail.

  Attributes:
    train: ``uint8`` tokens to sample training windows from.
    held_out: ``uint8`` tokens for evaluation (the last bytes of the text).
    source: where the text came from (a path or ``pydoc_data.topics``).
  """

  train: np.ndarray
  held_out: np.ndarray
  source: str


def default_text() -> str:
  """CPython's ``pydoc_data.topics``, joined in sorted-topic order.

  Sorted so that the text (and hence the split) does not depend on dict
  order across Python builds. Which topics land in the held-out tail does
  depend on the Python version (their wording changes between releases).
  """
  # Imported here: half a megabyte of strings that --text runs never need.
  from pydoc_data import topics

  return "\n\n".join(topics.topics[name] for name in sorted(topics.topics))


def stdlib_files(root: str | None = None) -> list[str]:
  """Relative paths of the standard library's ``.py`` files, sorted, tests excluded."""
  root = root or sysconfig.get_paths()["stdlib"]
  files = []
  for directory, subdirs, names in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs if d not in _NOT_STDLIB and not d.startswith("test_"))
    rel = os.path.relpath(directory, root)
    files += [
      os.path.normpath(os.path.join(rel, n))
      for n in sorted(names)
      if n.endswith(".py") and not n.startswith("test_")
    ]
  return files


def is_held_out(relative_path: str) -> bool:
  """Whether a standard-library file is held out: about one file in ten, by a
  hash of its path (stable across machines and Python versions)."""
  return zlib.crc32(relative_path.replace(os.sep, "/").encode()) % 10 == 0


def stdlib_tokens(root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """``(train, held_out)`` byte tokens of the standard library's sources.

  Files are concatenated in sorted-path order, each followed by a blank line;
  those :func:`is_held_out` picks form the held-out part. Files that are not
  UTF-8 are skipped.
  """
  root = root or sysconfig.get_paths()["stdlib"]
  parts: dict[bool, list[bytes]] = {True: [], False: []}
  for rel in stdlib_files(root):
    with open(os.path.join(root, rel), "rb") as f:
      raw = f.read()
    try:
      raw.decode("utf-8")
    except UnicodeDecodeError:
      continue
    parts[is_held_out(rel)].append(raw + b"\n\n")
  train, held_out = (np.frombuffer(b"".join(parts[k]), dtype=np.uint8) for k in (False, True))
  return train, held_out


def _read_text_file(path: str | os.PathLike[str]) -> str:
  if not os.path.isfile(path):
    raise CorpusError(
      f"--text {path!s}: no such file. Pass the path of a UTF-8 text "
      "file, or leave --text out to train on the built-in "
      f"{DEFAULT_SOURCE} corpus."
    )
  with open(path, "rb") as f:
    raw = f.read()
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise CorpusError(
      f"--text {path!s}: not UTF-8 text ({e.reason} at byte {e.start}). "
      "Convert it first, e.g. `iconv -f LATIN1 -t UTF-8 in.txt > out.txt`."
    ) from e


def split_tokens(
  tokens: np.ndarray, held_out_fraction: float = HELD_OUT_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
  """Splits ``tokens`` into ``(train, held_out)``: the held-out part is the tail.

  Args:
    tokens: 1-D token array.
    held_out_fraction: share of tokens (rounded up) held out, in ``(0, 1)``.

  Returns:
    Two views of ``tokens`` whose concatenation is ``tokens``.
  """
  n_held_out = math.ceil(len(tokens) * held_out_fraction)
  cut = len(tokens) - n_held_out
  return tokens[:cut], tokens[cut:]


def load_corpus(
  text_file: str | os.PathLike[str] | None = None,
  *,
  seq_len: int,
  held_out_fraction: float = HELD_OUT_FRACTION,
  corpus: str = "pydoc",
) -> Corpus:
  """Loads byte tokens from ``text_file`` (default: a built-in corpus) and splits.

  Args:
    text_file: a UTF-8 text file, or ``None`` for the built-in ``corpus``.
    corpus: ``"pydoc"`` (``pydoc_data.topics``) or ``"stdlib"`` (the standard
      library's sources, whole files held out); ignored with ``text_file``.
    seq_len: training sequence length; both parts must hold at least one
      window of ``seq_len + 1`` bytes (inputs plus shifted targets).
    held_out_fraction: share of the bytes held out for evaluation.

  Returns:
    The :class:`Corpus`.

  Raises:
    CorpusError: the file is missing, not UTF-8, empty or too small.
  """
  if text_file is None and corpus == "stdlib":
    train, held_out = stdlib_tokens()
    if min(len(train), len(held_out)) < seq_len + 1:
      raise CorpusError(f"--corpus stdlib: too little text here ({len(train)} + {len(held_out)} bytes).")
    return Corpus(train=train, held_out=held_out, source=f"stdlib ({sysconfig.get_paths()['stdlib']})")
  if corpus not in CORPORA:
    raise CorpusError(f"--corpus {corpus!r}: expected one of {CORPORA}.")
  if text_file is None:
    text, source = default_text(), DEFAULT_SOURCE
  else:
    text, source = _read_text_file(text_file), os.fspath(text_file)
  tokens = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
  train, held_out = split_tokens(tokens, held_out_fraction)
  if min(len(train), len(held_out)) < seq_len + 1:
    # Smallest size whose held-out tail still holds seq_len + 1 bytes.
    needed = math.ceil((seq_len + 1) / held_out_fraction)
    what = "is empty" if len(tokens) == 0 else f"has {len(tokens)} bytes"
    raise CorpusError(
      f"--text {source}: the file {what}; with --seq-len {seq_len} it needs "
      f"at least {needed} bytes ({held_out_fraction:.0%} is held out for "
      "evaluation and each part must fit one sequence). Use a longer "
      "file or a smaller --seq-len."
    )
  return Corpus(train=train, held_out=held_out, source=source)


def train_batch(
  tokens: np.ndarray,
  *,
  seed: int,
  step: int,
  batch_size: int,
  seq_len: int,
) -> tuple[np.ndarray, np.ndarray]:
  """The training batch of ``step``: random windows drawn from ``(seed, step)``.

  A fresh generator per step (rather than one advanced generator) is what
  makes ``--resume`` exact: step ``k`` gets the same batch whether or not the
  run was interrupted before it.

  Args:
    tokens: training tokens (``Corpus.train``).
    seed: run seed.
    step: 0-based step index.
    batch_size: windows per batch.
    seq_len: tokens per window.

  Returns:
    ``(inputs, targets)``, each ``int32 [batch_size, seq_len]``; targets are
    inputs shifted left by one token.
  """
  rng = np.random.default_rng((seed, step))
  starts = rng.integers(0, len(tokens) - seq_len, size=batch_size)
  windows = np.stack([tokens[s : s + seq_len + 1] for s in starts])
  windows = windows.astype(np.int32)
  return windows[:, :-1], windows[:, 1:]


def eval_batches(
  tokens: np.ndarray,
  *,
  batch_size: int,
  seq_len: int,
  max_batches: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
  """Fixed evaluation batches: non-overlapping windows spread over ``tokens``.

  The same windows at every evaluation make successive held-out losses (and
  the two optimizers) comparable without sampling noise.

  Args:
    tokens: held-out tokens (``Corpus.held_out``).
    batch_size: windows per batch (the last batch may be smaller).
    seq_len: tokens per window.
    max_batches: at most this many batches; windows are spaced evenly over
      the held-out text when it holds more.

  Returns:
    A list of ``(inputs, targets)`` pairs as in :func:`train_batch`.
  """
  n_windows = (len(tokens) - 1) // seq_len
  n_used = min(n_windows, batch_size * max_batches)
  starts = np.linspace(0, n_windows - 1, n_used).round().astype(int) * seq_len
  windows = np.stack([tokens[s : s + seq_len + 1] for s in starts])
  windows = windows.astype(np.int32)
  return [
    (windows[i : i + batch_size, :-1], windows[i : i + batch_size, 1:])
    for i in range(0, n_used, batch_size)
  ]
