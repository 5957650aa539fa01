"""`jaxseg.losses` is imported into users' own training code: it must stay light."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("flax", "optax", "orbax", "grain", "tensorflow", "torch", "scipy", "matplotlib")


def test_losses_import_without_framework_packages():
    code = (
        f"import sys, jaxseg.losses\nloaded = [m for m in {HEAVY!r} if m in sys.modules]\nassert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
