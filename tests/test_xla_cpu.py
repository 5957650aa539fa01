"""Which convolution library XLA_FLAGS select, and the default jaxseg's entry points set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxseg.xla_cpu import EIGEN_CONVOLUTIONS, YNN_FUSION_FLAG, eigen_convolutions, prefer_eigen_convolutions

ROOT = Path(__file__).resolve().parents[1]


FLAG = f"--{YNN_FUSION_FLAG}="


# As XLA reads them (checked against XLA's own reading below): every occurrence in order, +/- modify the
# set, a plain list replaces it, names in any case, with or without the enum prefix.
@pytest.mark.parametrize("flags, eigen", [
    ("", False),
    ("--xla_force_host_platform_device_count=8", False),
    (EIGEN_CONVOLUTIONS, True),
    (FLAG, True),  # every YNNPACK fusion off
    (FLAG + "individual_convolution,reduce", False),
    (FLAG + "reduce", True),
    (FLAG + "+individual_dot", False),
    (FLAG + "-INDIVIDUAL_CONVOLUTION", True),
    (FLAG + "-library_fusion_type_individual_convolution", True),
    (FLAG + "-individual_convolution,+individual_convolution", False),
    (f"{EIGEN_CONVOLUTIONS} {FLAG}+individual_dot", True),  # the second occurrence adds to the first
    (f"{EIGEN_CONVOLUTIONS} {FLAG}reduce,individual_convolution", False),
])
def test_eigen_convolutions_reads_the_ynn_fusion_flag(flags, eigen):
    assert eigen_convolutions(flags) is eigen


@pytest.mark.filterwarnings("ignore:prefer_eigen_convolutions.. ran after a JAX backend started")  # earlier tests started one
def test_prefer_eigen_convolutions_appends_the_flag_and_keeps_the_users(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    prefer_eigen_convolutions()
    assert os.environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {EIGEN_CONVOLUTIONS}"
    prefer_eigen_convolutions()  # idempotent
    assert os.environ["XLA_FLAGS"].count("ynn_fusion_type") == 1 and eigen_convolutions()
    mine = FLAG + "individual_convolution"
    monkeypatch.setenv("XLA_FLAGS", mine)
    prefer_eigen_convolutions()
    assert os.environ["XLA_FLAGS"] == mine and not eigen_convolutions()
    monkeypatch.delenv("XLA_FLAGS")
    prefer_eigen_convolutions()
    assert os.environ["XLA_FLAGS"] == EIGEN_CONVOLUTIONS


def xla_ynn_fusion_types(flags: str, tmp_path) -> set[str]:
    """The YNNPACK fusion types XLA ends up with for `flags`, from its dump of the debug options
    it compiled a convolution with (the compiled HLO looks the same either way)."""
    script = (
        "import jax, jax.numpy as jnp\n"
        "def conv(x, w): return jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
        "print(float(jax.jit(conv)(jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 3)))[0, 2, 2, 0]))\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"{flags} --xla_dump_to={tmp_path}")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["18.0"]
    (options,) = tmp_path.glob("*jit_conv.debug_options")
    return {line.split(":")[1].strip() for line in options.read_text().splitlines() if line.startswith(YNN_FUSION_FLAG)}


# (Without the flag the dump lists no fusion types: it holds only options set away from their
# defaults, and YNNPACK's default set includes single convolutions.)
@pytest.mark.parametrize("flags", [EIGEN_CONVOLUTIONS, FLAG + "-INDIVIDUAL_CONVOLUTION",
                                   f"{EIGEN_CONVOLUTIONS} {FLAG}+individual_dot", FLAG + "reduce,individual_convolution"])
def test_eigen_convolutions_agrees_with_xla(flags, tmp_path):
    on_ynn = "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION" in xla_ynn_fusion_types(flags, tmp_path)
    assert eigen_convolutions(flags) is not on_ynn


def test_train_py_sets_the_flag_on_import():
    script = "import os, runpy; runpy.run_path('train.py', run_name='not_main'); print(os.environ['XLA_FLAGS'])"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=dict(env, JAX_PLATFORMS="cpu"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == EIGEN_CONVOLUTIONS


def test_prefer_eigen_convolutions_warns_once_a_backend_runs(monkeypatch):
    import jax

    jax.devices()  # this test process's backend has started
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    with pytest.warns(UserWarning, match="after a JAX backend started"):
        prefer_eigen_convolutions()
