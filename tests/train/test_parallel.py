"""The device mesh and multi-process training: sharded runs equal the single-device run.

Tolerances: the losses of every step agree to 2e-5 (relative); the parameters after 6 steps to
1e-3 absolute. Sums over the batch run in another order on another device count, and Adam
divides each gradient by its own running scale, so a rounding difference in a near-zero
gradient becomes a difference of a fraction of the learning rate (4e-3 here) in that
parameter. Measured: 2e-4. The two processes of a multi-process run hold bitwise equal
parameters (one global array).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxseg.train import parallel
from jaxseg.train.inference import restore
from tests.train.parallel_runs import MEMBER_MESHES, MEMBER_VARIANTS, MESHES, flat_params

ROOT = Path(__file__).resolve().parents[2]
PARAMS_ATOL, LOSS_RTOL = 1e-3, 2e-5


def run_module(args, *, devices: int, timeout: int, extra_env=None):
    """A `python -m tests.train.parallel_runs ...` subprocess with `devices` CPU devices; a hang
    is killed (SIGKILL: after jax.distributed.initialize a process ignores SIGTERM)."""
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        **(extra_env or {}),
    )
    return subprocess.Popen(
        [sys.executable, "-m", "tests.train.parallel_runs", *map(str, args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ), timeout


def finish(processes):
    outputs = []
    for process, timeout in processes:
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other, _ in processes:
                other.kill()
            pytest.fail(f"a training subprocess hung for {timeout} s (killed)")
        assert process.returncode == 0, output[-4000:]
        outputs.append(output)
    return outputs


def train_losses(workdir: Path) -> np.ndarray:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return np.array([row["loss"] for row in rows if row["split"] == "train"])


def assert_params_close(actual: dict, expected: dict, atol: float) -> None:
    assert actual.keys() == expected.keys()
    worst = max(float(np.abs(actual[k] - expected[k]).max()) for k in expected)
    assert worst <= atol, f"largest parameter difference {worst:.2e} > {atol:.0e}"


# ---------------------------------------------------------------------------- in this process


def test_default_mesh_puts_every_device_on_data():
    mesh = parallel.make_mesh(dict(axes=("data",), shape=(-1,), axis_types=("auto",)))
    assert mesh.axis_names == ("data",) and mesh.size == jax.device_count()
    assert mesh.axis_types == (jax.sharding.AxisType.Auto,)


@pytest.mark.parametrize(
    "mesh, message",
    [
        (dict(axes=("model",), shape=(-1,), axis_types=("auto",)), "must include 'data'"),
        (dict(axes=("data",), shape=(2, 1), axis_types=("auto",)), "differ in length"),
        (dict(axes=("data",), shape=(-1,), axis_types=("manual",)), "axis_types"),
        (dict(axes=("data", "member"), shape=(-1, -1), axis_types=("auto", "auto")), "at most one axis"),
        (dict(axes=("data",), shape=(jax.device_count() + 1,), axis_types=("auto",)), "needs"),
    ],
)
def test_bad_mesh_config_names_the_key(mesh, message):
    with pytest.raises(ValueError, match=message) as error:
        parallel.make_mesh(mesh)
    assert "config.mesh" in str(error.value)


def test_batch_size_must_split_over_the_data_axis():
    mesh = parallel.make_mesh()
    parallel.check_batch_size(8 * mesh.size, mesh)
    if mesh.size > 1:
        with pytest.raises(ValueError, match="config.train.batch_size=1 must divide"):
            parallel.check_batch_size(1, mesh)


def test_fsdp_rule_splits_the_largest_divisible_axis_of_large_arrays():
    spec = parallel._fsdp_spec
    assert spec((3, 3, 16, 64), 8, 100) == jax.sharding.PartitionSpec(None, None, None, "data")
    assert spec((3, 3, 16, 6), 8, 100) == jax.sharding.PartitionSpec(None, None, "data")
    assert spec((3, 3, 5, 7), 8, 100) == jax.sharding.PartitionSpec()  # nothing divides
    assert spec((64,), 8, 100) == jax.sharding.PartitionSpec()  # too small
    assert spec((3, 3, 16, 64), 8, 0) == jax.sharding.PartitionSpec()  # off


def test_global_batch_round_trips_through_local_rows():
    mesh = parallel.make_mesh()
    batch = {
        "image": np.arange(2 * mesh.size * 3, dtype=np.uint8).reshape(2 * mesh.size, 3),
        "valid": np.ones(2 * mesh.size, bool),
    }
    placed = parallel.global_batch(batch, mesh)
    assert placed["image"].sharding.spec == jax.sharding.PartitionSpec("data")
    np.testing.assert_array_equal(parallel.local_rows(placed["image"]), batch["image"])


def test_no_distributed_initialisation_unless_asked(monkeypatch):
    monkeypatch.delenv(parallel.ENV_COORDINATOR, raising=False)
    assert parallel.initialize_distributed({"distributed": False}) is False


# ---------------------------------------------------------------------------- subprocesses


@pytest.mark.slow
def test_eight_devices_train_like_one_device(tmp_path):
    """U-Net with BatchNorm, CE + Dice (both over the global batch), 6 steps, batch 8: on
    meshes of 1 and 8 devices, and 8 with the large arrays of the state split over `data`."""
    finish([run_module(["meshes", tmp_path], devices=8, timeout=420)])
    reference = flat_params(restore(tmp_path / "single", "latest").state)
    expected_losses = train_losses(tmp_path / "single")
    expected_val = json.loads((tmp_path / "single.json").read_text())
    for name in MESHES:
        if name == "single":
            continue
        np.testing.assert_allclose(train_losses(tmp_path / name), expected_losses, rtol=LOSS_RTOL)
        assert_params_close(flat_params(restore(tmp_path / name, "latest").state), reference, PARAMS_ATOL)
        val = json.loads((tmp_path / f"{name}.json").read_text())
        np.testing.assert_allclose(val["loss"], expected_val["loss"], rtol=1e-4)
        assert abs(val["pixel_accuracy"] - expected_val["pixel_accuracy"]) < 2e-3
    # The sharded state changes where arrays live, not what is computed.
    assert_params_close(
        flat_params(restore(tmp_path / "fsdp8", "latest").state),
        flat_params(restore(tmp_path / "data8", "latest").state),
        1e-6,
    )


@pytest.mark.slow
def test_a_zoo_model_trains_on_eight_devices_like_on_one(tmp_path):
    """smp's Unet on a ResNet-18 (BatchNorm statistics over the global batch, one image per
    device), 6 SGD steps: the same losses, parameters and validation metrics on meshes of 1 and 8
    (measured 3e-6 apart; Adam would amplify the all-reduce's rounding, see `zoo_config_for`)."""
    finish([run_module(["zoo_meshes", tmp_path], devices=8, timeout=420)])
    reference = flat_params(restore(tmp_path / "single", "latest").state)
    assert any("encoder" in key and "layer4" in key for key in reference)
    losses = train_losses(tmp_path / "single")
    assert losses[-1] < losses[0] - 0.3  # it trains
    np.testing.assert_allclose(train_losses(tmp_path / "data8"), losses, rtol=LOSS_RTOL)
    assert_params_close(flat_params(restore(tmp_path / "data8", "latest").state), reference, 1e-4)
    expected_val = json.loads((tmp_path / "single.json").read_text())
    val = json.loads((tmp_path / "data8.json").read_text())
    np.testing.assert_allclose(val["loss"], expected_val["loss"], rtol=1e-4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_checkpoint_resume_like_one(tmp_path):
    """2 processes x 2 CPU devices (jax.distributed on localhost, gloo collectives): train to
    step 3 with a checkpoint, stop, start again and resume to step 6. Both processes end with
    identical parameters, equal to the single-process run of the same global batch."""
    for stop_after in (3, 0):
        port = free_port()
        finish(
            [
                run_module(
                    ["process", tmp_path, stop_after],
                    devices=2,
                    timeout=300,
                    extra_env={
                        parallel.ENV_COORDINATOR: f"127.0.0.1:{port}",
                        parallel.ENV_NUM_PROCESSES: "2",
                        parallel.ENV_PROCESS_ID: str(index),
                    },
                )
                for index in range(2)
            ]
        )
    results = [json.loads((tmp_path / f"process_{i}.json").read_text()) for i in range(2)]
    assert results[0] == results[1] and results[0]["processes"] == 2 and results[0]["devices"] == 4
    assert results[0]["step"] == 6
    params = [dict(np.load(tmp_path / f"process_{i}.npz")) for i in range(2)]
    assert_params_close(params[1], params[0], 0.0)
    assert (tmp_path / "run" / "checkpoints" / "3").exists()  # the stop point it resumed from

    single = tmp_path / "single"
    finish([run_module(["single", single], devices=1, timeout=300)])
    np.testing.assert_allclose(train_losses(tmp_path / "run"), train_losses(single), rtol=LOSS_RTOL)
    assert_params_close(params[0], flat_params(restore(single, "latest").state), PARAMS_ATOL)


@pytest.mark.slow
def test_member_axis_split_over_devices_trains_like_unsharded(tmp_path):
    """Four ablation members on one device, and split one per device over the member axis of a
    (member 4, data 2) mesh of 8 CPU devices (jax.shard_map, manual over `member` only, so each
    member's batch reductions still span the `data` axis): same losses and parameters."""
    from tests.train.tiny import flat, saved_state

    finish([run_module(["members", tmp_path], devices=8, timeout=600)])
    names = list(MEMBER_MESHES)
    expected, got = (flat(saved_state(tmp_path / name, 6)["params"]) for name in names)
    assert_params_close(got, expected, PARAMS_ATOL)
    np.testing.assert_allclose(train_losses(tmp_path / names[1]), train_losses(tmp_path / names[0]), rtol=LOSS_RTOL)
    records = [json.loads(line) for line in (tmp_path / names[1] / "metrics.jsonl").read_text().splitlines()]
    assert {r["member"] for r in records} == set(MEMBER_VARIANTS)


@pytest.mark.slow
def test_two_processes_evaluate_detection_over_all_images(tmp_path):
    """COCO mAP is not a sum over batches: each process decodes its share of the validation
    images and the evaluation gathers them all. 2 processes x 2 CPU devices see the 20
    images and score like the single-process run."""
    port = free_port()
    finish(
        [
            run_module(
                ["detection", tmp_path / "multi"],
                devices=2,
                timeout=300,
                extra_env={
                    parallel.ENV_COORDINATOR: f"127.0.0.1:{port}",
                    parallel.ENV_NUM_PROCESSES: "2",
                    parallel.ENV_PROCESS_ID: str(index),
                },
            )
            for index in range(2)
        ]
    )
    finish([run_module(["detection_single", tmp_path / "single"], devices=1, timeout=300)])

    def defined(path):  # NaN (an area range without boxes) is not equal to itself
        return {k: v for k, v in json.loads(path.read_text()).items() if v == v}

    multi = [defined(tmp_path / "multi" / f"detection_{i}.json") for i in range(2)]
    single = defined(tmp_path / "single" / "detection_0.json")
    assert multi[0] == multi[1] and multi[0]["processes"] == 2 and multi[0]["devices"] == 4
    assert multi[0]["images"] == single["images"] == 20
    assert multi[0]["gt_boxes"] == single["gt_boxes"]
    np.testing.assert_allclose(multi[0]["loss"], single["loss"], rtol=1e-4)
    np.testing.assert_allclose(multi[0]["map50"], single["map50"], atol=0.02)
