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
    return [
        sys.executable,
        str(ROOT / "train.py"),
        f"--config={ROOT / 'configs' / 'seg_shapes_unet.py'}",
        f"--workdir={workdir}",
        f"--config.compilation_cache={cache}",
        *TINY_FLAGS,
        f"--config.train.steps={STEPS}",
        "--config.train.log_every=5",
        f"--config.train.eval_every={STEPS}",
        f"--config.train.checkpoint_every={checkpoint_every}",
    ]


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
            raise AssertionError(
                f"training exited with {process.returncode} before step {step}: {process.stderr.read()[-3000:]}"
            )
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no step {step} within {timeout} s")
        time.sleep(0.05)


def run_to_end(workdir: Path, cache: str, checkpoint_every: int) -> None:
    result = subprocess.run(
        command(workdir, cache, checkpoint_every), cwd=ROOT, capture_output=True, text=True, timeout=600
    )
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


@pytest.mark.slow  # two training subprocesses; CI runs it
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_current_step_and_the_rerun_resumes(tmp_path, cache, uninterrupted, signum):
    process = subprocess.Popen(
        command(tmp_path, cache, checkpoint_every=100),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
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
        process = subprocess.Popen(
            command(tmp_path, cache, checkpoint_every=3),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        start = trained_step(tmp_path)
        wait_for_step(process, tmp_path, min(start + 5, STEPS - 30))
        time.sleep(rng.uniform(0.0, 1.5))
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    assert any(p.name.isdigit() for p in (tmp_path / "checkpoints").iterdir())
    run_to_end(tmp_path, cache, checkpoint_every=3)
    assert_same_final_state(tmp_path, uninterrupted)


@pytest.mark.slow
def test_checkify_mode_stops_a_bad_batch_inside_the_step_and_naming_it(tiny_config):
    import jax
    from jax.experimental import checkify

    from jaxseg.tasks import segmentation
    from jaxseg.train import parallel
    from jaxseg.train.program import compile_program

    results = []
    for checked in (False, True):
        tiny_config.train.checkify = checked
        mesh = parallel.make_mesh(tiny_config.get("mesh"))
        program = compile_program(tiny_config, mesh, segmentation.Task(tiny_config))
        hp = program.place_hp(segmentation.hyperparameters(tiny_config))
        data = segmentation.make_data(tiny_config, Path(tiny_config.compilation_cache or "/tmp"))
        batch = next(data.train)
        state, metrics = program.train(program.init(), parallel.global_batch(batch, mesh=mesh), hp)
        results.append(float(jax.device_get(metrics["loss"])))
    assert results[0] == results[1]  # the checks change nothing on a good batch
    bad = dict(batch, label=np.where(batch["label"] == 1, 7, batch["label"]).astype(np.int32))
    with pytest.raises(
        checkify.JaxRuntimeError,
        match=r"step 1: label values outside \[0, 5\) that are not the "
        r"ignore value 255: min 0, max 7",
    ):
        program.train(state, parallel.global_batch(bad, mesh=mesh), hp)


FULL_DISK_SCRIPT = r"""
import resource, sys
import grain
import jax.numpy as jnp
from jaxseg.train.checkpoint import Checkpointer, CheckpointSaveError

Iterator = lambda: iter(grain.MapDataset.range(10).to_iter_dataset())
checkpoints = Checkpointer(sys.argv[1], keep=3)
state = {"w": jnp.arange(4096.0)}
checkpoints.save(1, state, Iterator(), {"note": "first"})
checkpoints.wait()
resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))  # the disk is now full
try:
    checkpoints.save(2, {"w": state["w"] + 1}, Iterator(), {"note": "second"})
    checkpoints.wait()
except CheckpointSaveError as error:
    print("ERROR:", error)
"""


def test_a_full_disk_during_a_save_is_a_clear_error_and_older_checkpoints_stay(tmp_path):
    import jax
    import jax.numpy as jnp

    from jaxseg.train.checkpoint import Checkpointer

    directory = tmp_path / "checkpoints"
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK_SCRIPT, str(directory)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert "ERROR: saving a checkpoint (step 2)" in result.stdout, result.stdout + result.stderr[-3000:]
    assert "File too large" in result.stdout and "The complete checkpoints [1] are intact" in result.stdout
    checkpoints = Checkpointer(directory, asynchronous=False)
    assert checkpoints.latest_step() == 1
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    restored = checkpoints.restore(1, {"w": jax.ShapeDtypeStruct((4096,), jnp.float32, sharding=device)})
    np.testing.assert_array_equal(restored["w"], np.arange(4096.0))
    checkpoints.close()


def test_checkpoints_ranked_by_the_old_metric_name_still_resume_and_rank(tmp_path):
    import grain
    import jax.numpy as jnp

    from jaxseg.train.checkpoint import Checkpointer

    data = iter(grain.MapDataset.range(10).to_iter_dataset())
    old = Checkpointer(tmp_path, best_metric="val_miou", asynchronous=False)
    old.save(1, {"w": jnp.ones(3)}, data, {}, {"val_miou": 0.7})
    old.close()
    checkpoints = Checkpointer(tmp_path, asynchronous=False)
    checkpoints.save(2, {"w": jnp.ones(3)}, data, {}, {"val_score": 0.5})
    checkpoints.save(3, {"w": jnp.ones(3)}, data, {}, {"val_score": 0.6})
    assert checkpoints.best_step() == 1 and checkpoints.latest_step() == 3
    checkpoints.close()
