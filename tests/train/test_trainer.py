"""End to end: a tiny config learns, resumes exactly, evaluates, predicts; bad configs fail early."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from jaxseg.evaluate import evaluate_workdir
from jaxseg.figures import read_metrics
from jaxseg.predict import predict_files
from jaxseg.train.inference import predict_fn, restore
from jaxseg.train.loop import train_and_evaluate

ROOT = Path(__file__).resolve().parents[2]


def train_losses(workdir):
    return [r["loss"] for r in read_metrics(workdir) if r["split"] == "train"]


def test_tiny_training_lowers_the_loss_and_writes_its_outputs(tiny_config, tmp_path):
    tiny_config.train.steps = 16
    tiny_config.optim.learning_rate = 1e-2
    metrics = train_and_evaluate(tiny_config, tmp_path)
    losses = train_losses(tmp_path)
    assert len(losses) == 8
    assert np.mean(losses[-2:]) < losses[0]
    assert 0.0 <= metrics["miou"] <= 1.0
    kept = {p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()}
    assert {"12", "16"} <= kept  # the latest two (plus the best by validation mIoU)
    assert (tmp_path / "figures" / "curves.png").exists()
    assert (tmp_path / "figures" / "val_step_000016.png").exists()


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tiny_config, tmp_path):
    tiny_config.data.jitter = 0.3  # augmentation randomness must replay too
    train_and_evaluate(tiny_config, tmp_path / "straight")
    tiny_config.train.stop_after = 4
    train_and_evaluate(tiny_config, tmp_path / "interrupted")
    assert max(int(p.name) for p in (tmp_path / "interrupted" / "checkpoints").iterdir() if p.name.isdigit()) == 4
    tiny_config.train.stop_after = 0
    train_and_evaluate(tiny_config, tmp_path / "interrupted")
    straight = restore(tmp_path / "straight", "latest")
    resumed = restore(tmp_path / "interrupted", "latest")
    assert straight.step == resumed.step == 8
    for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(a, b)  # bitwise: same batches, keys and arithmetic
    assert train_losses(tmp_path / "straight")[-1] == train_losses(tmp_path / "interrupted")[-1]


def test_evaluate_and_predict_any_image_size(tiny_config, tmp_path):
    train_and_evaluate(tiny_config, tmp_path / "run")
    metrics = evaluate_workdir(tmp_path / "run", "latest")
    assert metrics["step"] == 8
    # The reported mIoU against one computed here from the restored model's class ids, pixel
    # sets per class (padding rows and ignored pixels left out), not from a confusion matrix.
    restored = restore(tmp_path / "run", "latest")
    predict = predict_fn(restored)
    hits, unions = np.zeros(tiny_config.num_classes), np.zeros(tiny_config.num_classes)
    for batch in restored.task.make_data(tmp_path / "run").val:
        predicted = np.asarray(predict(restored.state, jax.device_put(batch)))
        counted = (batch["label"] != tiny_config.data.ignore_index) & batch["valid"][:, None, None]
        for c in range(tiny_config.num_classes):
            truth, guess = (batch["label"] == c) & counted, (predicted == c) & counted
            hits[c] += np.sum(truth & guess)
            unions[c] += np.sum(truth | guess)
    expected = np.mean(hits[unions > 0] / unions[unions > 0])
    assert metrics["miou"] == pytest.approx(expected, abs=1e-6)
    assert (tmp_path / "run" / "eval_step_8.json").exists()
    rng = np.random.default_rng(0)
    for name, size in (("small.png", (20, 24)), ("large.jpg", (70, 45))):
        Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(tmp_path / name)
    written = predict_files(tmp_path / "run", [tmp_path / "small.png", tmp_path / "large.jpg"], tmp_path / "out")
    assert [p.name for p in written] == ["small_mask.png", "large_mask.png"]
    assert Image.open(tmp_path / "out" / "large_mask.png").size == (45, 70)
    labels = np.asarray(Image.open(tmp_path / "out" / "small_labels.png"))
    assert labels.shape == (20, 24) and labels.max() < tiny_config.num_classes


@pytest.mark.slow  # the folder source and pipelines are tested by default in tests/data
def test_folder_dataset_trains(tiny_config, tmp_path):
    from tests.data.conftest import write_folder

    write_folder(tmp_path / "data", count=8, size=(32, 32))
    tiny_config.num_classes = 3
    tiny_config.data.update(name="folder", root=str(tmp_path / "data"), train_split="train.txt", val_split="val.txt")
    tiny_config.loss.class_weighting = "median"
    tiny_config.data.balance = True
    tiny_config.train.batch_size = 2
    metrics = train_and_evaluate(tiny_config, tmp_path / "run")
    assert "miou" in metrics
    assert (tmp_path / "run" / "label_statistics.json").exists()


@pytest.mark.slow  # the pipeline-level skip test runs by default (tests/data/test_pipeline.py)
def test_bad_samples_stop_the_run_or_are_skipped_and_counted(tiny_config, tmp_path):
    from tests.data.conftest import write_folder

    write_folder(tmp_path / "data", count=8, size=(32, 32))
    broken = sorted((tmp_path / "data" / "images").iterdir())[2]
    broken.write_bytes(broken.read_bytes()[:100])  # truncated
    tiny_config.num_classes = 3
    tiny_config.data.update(name="folder", root=str(tmp_path / "data"), balance=True)
    tiny_config.train.update(steps=4, batch_size=2, eval_every=4, log_every=2)
    with pytest.raises(ValueError, match=f"{broken.name}: cannot read the image"):
        train_and_evaluate(tiny_config, tmp_path / "strict")
    tiny_config.data.skip_bad_samples = True
    metrics = train_and_evaluate(tiny_config, tmp_path / "lenient")
    assert "miou" in metrics
    logged = [r["bad_samples_skipped"] for r in read_metrics(tmp_path / "lenient") if r["split"] == "train"]
    assert logged and logged[-1] >= 1


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.train.stepz=3", "stepz"),
        ("--config.optim.name=adagrad", "config.optim.name must be one of"),
        ("--config.loss.class_weights=(1.0,2.0)", "config.loss.class_weights has 2 values"),
        ("--config.data.ignore_index=0", "config.data.ignore_index=0 is a class id"),
        ("--config.mesh.shape=(3,)", "config.mesh.shape=(3,) needs 3 devices"),
        ("--config.ablation.variants={'a':{'data':{'seed':1}}}", "cannot vary 'data.seed'"),
    ],
)
def test_bad_config_fails_at_start_naming_the_key(override, message, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--config=configs/seg_shapes_unet.py",
            f"--workdir={tmp_path}",
            override,
            "--config.train.steps=2",
            "--config.optim.warmup_steps=1",
            "--config.data.train_samples=8",
            "--config.data.val_samples=2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-3000:]


def test_an_unwritable_workdir_is_an_error_at_start(tiny_config, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with pytest.raises(OSError, match=f"workdir {blocked / 'run'} is not writable"):
        train_and_evaluate(tiny_config, blocked / "run")


class _Sums(list):
    def result(self):
        return {"collected": sum(self)}


class _CollectingTask:
    """A task whose evaluation collects predictions (as COCO mAP does): the sum of predicted values."""

    collects_predictions = True
    statistics = ()

    def evaluator(self):
        return _Sums()

    def add_to(self, collector, batch, predictions):
        collector.append(float(np.sum(predictions)))

    def scores(self, summary, statistics):
        return {}


def test_evaluation_that_collects_predictions_runs_one_pass_per_batch():
    from jaxseg.train.loop import evaluate

    passes = []

    def with_predictions(state, batch, hp):
        passes.append(batch["x"])
        return {"loss": batch["x"].sum(), "count": jax.numpy.float32(batch["x"].shape[0])}, batch["x"] * 2

    def metrics_only(state, batch, hp):
        raise AssertionError("a second forward pass for the metrics")

    batches = [{"x": np.full((2,), i, np.float32)} for i in range(3)]
    task = _CollectingTask()
    (summary,) = evaluate(None, {}, batches, metrics_only, task=task, with_predictions=with_predictions)
    assert len(passes) == 3
    assert summary["collected"] == 0.0 + 4.0 + 8.0  # every batch's predictions, once
    assert summary["loss"] == pytest.approx((0 + 2 + 4) / 6)
    with pytest.raises(ValueError, match="predictions of a single model"):
        evaluate(None, {}, batches, metrics_only, task=task)
