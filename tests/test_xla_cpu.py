"""Which convolution library XLA_FLAGS select, and the default jaxseg's entry points set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxseg.xla_cpu import EIGEN_CONVOLUTIONS, eigen_convolutions, prefer_eigen_convolutions

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("flags, eigen", [
    ("", False),
    ("--xla_force_host_platform_device_count=8", False),
    (EIGEN_CONVOLUTIONS, True),
    ("--xla_cpu_experimental_ynn_fusion_type=", True),  # every YNNPACK fusion off
    ("--xla_cpu_experimental_ynn_fusion_type=individual_convolution,reduce", False),
    ("--xla_cpu_experimental_ynn_fusion_type=reduce", True),
    ("--xla_cpu_experimental_ynn_fusion_type=+individual_reduce", False),
    (f"{EIGEN_CONVOLUTIONS} --xla_cpu_experimental_ynn_fusion_type=+individual_reduce", False),  # XLA keeps the last
    (f"--xla_cpu_experimental_ynn_fusion_type=+individual_reduce {EIGEN_CONVOLUTIONS}", True),
])
def test_eigen_convolutions_reads_the_ynn_fusion_flag(flags, eigen):
    assert eigen_convolutions(flags) is eigen


def test_prefer_eigen_convolutions_appends_the_flag_and_keeps_the_users(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    prefer_eigen_convolutions()
    assert os.environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {EIGEN_CONVOLUTIONS}"
    prefer_eigen_convolutions()  # idempotent
    assert os.environ["XLA_FLAGS"].count("ynn_fusion_type") == 1 and eigen_convolutions()
    mine = "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"
    monkeypatch.setenv("XLA_FLAGS", mine)
    prefer_eigen_convolutions()
    assert os.environ["XLA_FLAGS"] == mine and not eigen_convolutions()
    monkeypatch.delenv("XLA_FLAGS")
    prefer_eigen_convolutions()
    assert os.environ["XLA_FLAGS"] == EIGEN_CONVOLUTIONS


def test_xla_accepts_the_flag_and_train_py_sets_it():
    """A JAX process started with the flag computes a convolution (XLA rejects unknown values
    at start-up), and train.py puts the flag in place on import."""
    script = (
        "import os, runpy, sys; sys.argv = ['train.py', '--help']\n"
        "import jax, jax.numpy as jnp\n"
        "try:\n    runpy.run_path('train.py', run_name='not_main')\nexcept SystemExit:\n    pass\n"
        "print(os.environ['XLA_FLAGS'])\n"
        "x = jnp.ones((1, 6, 6, 2)); w = jnp.ones((3, 3, 2, 3))\n"
        "y = jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
        "print(float(y[0, 2, 2, 0]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=dict(env, JAX_PLATFORMS="cpu"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert EIGEN_CONVOLUTIONS in lines and lines[-1] == "18.0"
