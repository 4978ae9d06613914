"""The README's optax example runs and its numbers are the library's."""

from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
  return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_optax_example_runs_and_trains():
  code = next(b for b in python_blocks() if "optax.chain" in b)
  namespace: dict = {}
  exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
  jnp = namespace["jnp"]
  # The update moved the parameters, and the state is Adam-mini's.
  assert float(jnp.abs(namespace["params"]["mlp"]["kernel"]).sum()) > 0
  nu = namespace["opt_state"][1][0].nu
  assert nu["q_proj"]["kernel"].shape == (4,)


def test_override_example_builds_a_transform():
  code = next(b for b in python_blocks() if "BlockRules(" in b)
  namespace: dict = {}
  exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
  assert namespace["rules"].value_as_one_block
