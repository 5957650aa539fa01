"""Preemption and crashes never lose work: SIGTERM saves and stops; kill -9 at random moments
(during asynchronous checkpoint writes too) leaves only complete checkpoints, and the resumed
run ends bitwise equal to an uninterrupted one (CPU, same data order and random keys)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.train.tiny import TINY_FLAGS, flat, saved_state

ROOT = Path(__file__).resolve().parents[2]
STEPS = 300


def command(workdir: Path, cache: str, checkpoint_every: int) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), f"--config={ROOT / 'configs' / 'seg_shapes_unet.py'}",
            f"--workdir={workdir}", f"--config.compilation_cache={cache}", *TINY_FLAGS,
            f"--config.train.steps={STEPS}", "--config.train.log_every=5", f"--config.train.eval_every={STEPS}",
            f"--config.train.checkpoint_every={checkpoint_every}"]


def trained_step(workdir: Path) -> int:
    """The last training step logged so far (0 before the first log)."""
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip().endswith("}")]
    return max(steps, default=0)


def wait_for_step(process, workdir: Path, step: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while trained_step(workdir) < step:
        if process.poll() is not None:
            raise AssertionError(f"training exited with {process.returncode} before step {step}: "
                                 f"{process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no step {step} within {timeout} s")
        time.sleep(0.05)


def run_to_end(workdir: Path, cache: str, checkpoint_every: int) -> None:
    result = subprocess.run(command(workdir, cache, checkpoint_every), cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("xla_cache_reliability"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    run_to_end(workdir, cache, checkpoint_every=100)
    return flat(saved_state(workdir, STEPS))


def assert_same_final_state(workdir: Path, expected: dict) -> None:
    got = flat(saved_state(workdir, STEPS))
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_signal_saves_the_current_step_and_the_rerun_resumes(tmp_path, cache, uninterrupted, signum):
    process = subprocess.Popen(command(tmp_path, cache, checkpoint_every=100), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_for_step(process, tmp_path, 20)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr[-3000:]
    assert f"stopped by {signal.Signals(signum).name} at step" in stderr
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and 20 <= saved[-1] < STEPS and saved[-1] % 100, saved  # the current step, not a scheduled one
    run_to_end(tmp_path, cache, checkpoint_every=100)
    assert_same_final_state(tmp_path, uninterrupted)


@pytest.mark.slow
def test_kill_9_at_random_moments_never_leaves_a_checkpoint_that_breaks_resume(tmp_path, cache, uninterrupted):
    """Checkpoints every 3 steps, so asynchronous writes are nearly always in flight; the run is
    killed with SIGKILL at four random moments, restarted each time, and finally completed."""
    rng = random.Random(0)
    for _ in range(4):
        process = subprocess.Popen(command(tmp_path, cache, checkpoint_every=3), cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        start = trained_step(tmp_path)
        wait_for_step(process, tmp_path, min(start + 5, STEPS - 30))
        time.sleep(rng.uniform(0.0, 1.5))
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    assert any(p.name.isdigit() for p in (tmp_path / "checkpoints").iterdir())
    run_to_end(tmp_path, cache, checkpoint_every=3)
    assert_same_final_state(tmp_path, uninterrupted)
