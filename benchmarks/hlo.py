"""Counting full-size passes over the parameters in optimized HLO text.

An optimizer update is memory-bound: its cost is the number of times it
streams parameter-sized arrays through memory. This module reads the ENTRY
computation of ``compiled.as_text()`` and counts, for every instruction that
touches a parameter-sized array (a fusion, a custom YNNPACK fusion, a copy),
how many such arrays it reads and writes.
"""

from __future__ import annotations

import dataclasses
import math
import re

_SHAPE = re.compile(r"(pred|s8|s16|s32|s64|u8|u32|bf16|f16|f32|f64)\[([0-9,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.+?) ([a-z][a-z0-9-]*)\((.*?)\)(,|$)")
_FREE = frozenset({"parameter", "constant", "tuple", "get-tuple-element", "bitcast"})
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "bf16": 2, "f16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "f64": 8}


@dataclasses.dataclass(frozen=True)
class Passes:
  """Full-size traffic of one compiled update.

  Attributes:
    instructions: ENTRY instructions that read or write a full-size array.
    arrays_moved: full-size arrays read plus written, summed over them.
    words_per_param: ``arrays_moved`` weighted by size, over the parameter
      count (in units of one parameter-sized array each).
    bytes_moved: bytes of full-size arrays read plus written.
  """

  instructions: int
  arrays_moved: int
  words_per_param: float
  bytes_moved: int


def _arrays(shape_text: str) -> list[tuple[int, int]]:
  out = []
  for dtype, dims in _SHAPE.findall(shape_text):
    n = math.prod(int(d) for d in dims.split(",")) if dims else 1
    out.append((n, _BYTES[dtype]))
  return out


def count_passes(hlo_text: str, leaf_sizes: set[int], num_params: int) -> Passes:
  """Counts traffic through arrays whose size is one of ``leaf_sizes``.

  Args:
    hlo_text: ``jax.jit(...).lower(...).compile().as_text()``.
    leaf_sizes: element counts of the parameter leaves that count as
      full-size (pass only the large ones: v-shaped arrays must not match).
    num_params: total parameter count, to normalise.
  """
  entry = hlo_text[hlo_text.index("\nENTRY"):]
  shapes: dict[str, list[tuple[int, int]]] = {}
  instructions = arrays = 0
  elements = nbytes = 0
  for line in entry.splitlines()[1:]:
    match = _INSTR.match(line)
    if not match:
      continue
    name, out_shape, opcode, operands = match.groups()[:4]
    shapes[name] = _arrays(out_shape)
    if opcode in _FREE:
      continue
    touched = [a for a in shapes[name] if a[0] in leaf_sizes]
    for operand in re.findall(r"%([\w.\-]+)", operands):
      touched += [a for a in shapes.get(operand, []) if a[0] in leaf_sizes]
    if touched:
      instructions += 1
      arrays += len(touched)
      elements += sum(n for n, _ in touched)
      nbytes += sum(n * b for n, b in touched)
  return Passes(instructions, arrays, elements / max(num_params, 1), nbytes)
