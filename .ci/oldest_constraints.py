"""Print pip constraints that pin every dependency of pyproject.toml to its lower bound.

CI installs the default test environment with them once (`pip install -c`), so the oldest
versions pyproject allows are tested, not only the newest.
"""

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml").read_text())["project"]
requirements = list(project["dependencies"])
for extra in project["optional-dependencies"].values():
    requirements += [r for r in extra if not r.startswith("jaxseg")]
pins = {}
for requirement in requirements:
    match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)", requirement.strip())
    if match:
        pins[match.group(1).lower()] = match.group(3)
if "jax" in pins:
    pins.setdefault("jaxlib", pins["jax"])  # jax's compiled half, released with it
for name, version in sorted(pins.items()):
    print(f"{name}=={version}")
