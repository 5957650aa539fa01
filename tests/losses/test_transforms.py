"""Runs transform_cases in-process and, for the pmap variants, on four CPU devices."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.losses.cases import LOSSES
from tests.losses.transform_cases import LossTransformationsTest  # noqa: F401  (collected here)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # 50 s of compiles in a subprocess; jit/vmap/grad variants run by default
def test_pmap_variants_on_four_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "pmap",
            "tests/losses/transform_cases.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "skipped" not in result.stdout.splitlines()[-1], result.stdout[-2000:]
    assert f"{len(LOSSES)} passed" in result.stdout, result.stdout[-2000:]
