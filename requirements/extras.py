"""Print the requirements of dro-rebel and of the named extras, one a line, from pyproject.toml.

    python requirements/extras.py torch trl peft demo dev > .venv/requirements.txt

pyproject.toml is the one list of dependencies. `make setup` installs them from this output
rather than with `pip install ".[...]"`, which would build the extension a second time (maturin
develop builds it afterwards). Python 3.9 and 3.10 need tomli, installed first by the Makefile.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9 and 3.10
    import tomli as tomllib


def requirements(extras: list) -> list:
    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = sorted(set(extras) - set(optional))
    if unknown:
        raise SystemExit(f"no such extras in pyproject.toml: {', '.join(unknown)}")
    lines = list(project.get("dependencies", []))
    for extra in extras:
        lines += [line for line in optional[extra] if line not in lines]
    return lines


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1:])))
