"""Runs the README's optax snippet against an installed optax_mini wheel.

Run by .ci/run with a fresh venv's python, from a directory outside the
checkout, so that only what the wheel installed can be imported: a module or
data file missing from the wheel fails here rather than hiding behind the
source tree.
"""

import pathlib
import re
import sys
import zipfile

import optax_mini

readme = pathlib.Path(sys.argv[1]).read_text()
installed = pathlib.Path(optax_mini.__file__).resolve()
checkout = pathlib.Path(sys.argv[1]).resolve().parent
assert checkout not in installed.parents, f"optax_mini imported from the checkout: {installed}"
assert (installed.parent / "py.typed").exists(), "py.typed is missing from the wheel"
names = zipfile.ZipFile(sys.argv[2]).namelist()
assert any(n.endswith("licenses/LICENSE") for n in names), f"LICENSE is missing from the wheel: {names}"
code = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "optax.chain" in b)
namespace: dict = {}
exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
nu = namespace["opt_state"][1][0].nu
assert nu["q_proj"]["kernel"].shape == (4,), nu
print(f"wheel OK: optax_mini {optax_mini.__version__} from {installed.parent}; README optax snippet ran")
