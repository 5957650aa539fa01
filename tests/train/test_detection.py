"""Object detection end to end: a tiny FCOS learns the shape boxes through the shared trainer,
is scored with pycocotools, resumes, evaluates from its workdir and draws boxes on a file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from configs import det_shapes
from jaxseg.data.shapes import make_detection_sample
from jaxseg.evaluate import evaluate_workdir
from jaxseg.figures import read_metrics
from jaxseg.predict import predict_files
from jaxseg.tasks import detection
from jaxseg.train.inference import predict_fn, restore
from jaxseg.train.loop import train_and_evaluate
from tests.metrics.test_detection import average_precision

ROOT = Path(__file__).resolve().parents[2]


def tiny_detection_config(compilation_cache: str = ""):
    config = det_shapes.get_config()
    config.compilation_cache = compilation_cache
    config.tensorboard = False
    config.data.update(train_samples=256, val_samples=24, num_threads=1)
    config.model.update(widths=(8, 16, 32), fpn_width=16, head_width=16, head_convs=1)
    config.optim.update(learning_rate=1e-2, warmup_steps=5)
    config.train.update(
        steps=60, batch_size=8, eval_batch_size=8, log_every=20, eval_every=30, checkpoint_every=30, progress=False
    )
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("det") / "run"
    config = tiny_detection_config()
    return config, workdir, train_and_evaluate(config, workdir)


def test_detector_trains_and_is_scored_with_coco_map(trained):
    config, workdir, metrics = trained
    records = read_metrics(workdir)
    train = [r for r in records if r["split"] == "train"]
    assert len(train) == 3 and train[-1]["loss"] < train[0]["loss"]
    # The centerness term is a cross-entropy against soft targets: its floor is their entropy
    # (about 0.6 here), so the classification and box terms carry the fall.
    assert train[-1]["loss_classes"] < 0.8 * train[0]["loss_classes"]
    assert train[-1]["loss_box"] < 0.8 * train[0]["loss_box"]
    for key in ("map", "map50", "map75", *(f"ap/{name}" for name in config.data.class_names)):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["map50"] >= metrics["map"] and metrics["map50"] > 0.05  # 60 tiny steps: above chance
    vals = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in vals] == [30, 60]
    assert (workdir / "figures" / "val_step_000060.png").exists() and (workdir / "figures" / "curves.png").exists()


def test_evaluate_from_the_workdir_matches_training(trained):
    config, workdir, metrics = trained
    evaluated = evaluate_workdir(workdir, step="latest")
    assert evaluated["step"] == 60
    np.testing.assert_allclose(evaluated["map"], metrics["map"], atol=1e-6)
    np.testing.assert_allclose(evaluated["loss"], metrics["loss"], rtol=1e-5)


def test_reported_map_equals_an_independent_ap_of_the_restored_models_detections(trained):
    # From the restored model's decoded detections and the validation boxes, per valid image,
    # scored by the NumPy 101-point AP of the metric tests (no pycocotools, no CocoEvaluator).
    config, workdir, metrics = trained
    restored = restore(workdir, "latest")
    predict = predict_fn(restored)
    images = []
    for batch in restored.task.make_data(workdir).val:
        found = jax.device_get(predict(restored.state, jax.device_put(batch)))
        for b in np.flatnonzero(batch["valid"]):
            truth = [
                (box, c) for box, c, real in zip(batch["boxes"][b], batch["classes"][b], batch["box_mask"][b]) if real
            ]
            kept = zip(found.boxes[b], found.scores[b], found.classes[b], found.mask[b])
            images.append((truth, [(box, float(score), c) for box, score, c, real in kept if real]))
    assert len(images) == config.data.val_samples and any(found for _, found in images)
    present = sorted({int(c) for truth, _ in images for _, c in truth})
    ap = {t: np.mean([average_precision(images, c, t) for c in present]) for t in np.linspace(0.5, 0.95, 10)}
    assert metrics["map50"] == pytest.approx(ap[0.5], abs=1e-6)
    assert metrics["map"] == pytest.approx(np.mean(list(ap.values())), abs=1e-6)


def test_predict_draws_boxes_on_an_image_of_another_size(trained, tmp_path):
    _, workdir, _ = trained
    image = make_detection_sample(0, "test", 0)["image"]
    path = tmp_path / "shapes.png"
    Image.fromarray(image).resize((96, 80)).save(path)
    written = predict_files(workdir, [path], tmp_path / "out", step="latest", min_score=0.0)
    assert written == [tmp_path / "out" / "shapes_boxes.png"]
    drawn = np.asarray(Image.open(written[0]))
    assert drawn.shape[0] == 80 * (256 // 96) and drawn.shape[1] == 96 * (256 // 96)
    listed = json.loads((tmp_path / "out" / "shapes_boxes.json").read_text())
    assert listed, "min_score=0 lists every kept detection"
    for item in listed:
        x0, y0, x1, y1 = item["box_xyxy"]
        assert 0 <= x0 <= x1 <= 96 and 0 <= y0 <= y1 <= 80
        assert item["class"] in det_shapes.get_config().data.class_names


@pytest.mark.slow
def test_detection_resumes_exactly(tmp_path):
    config = tiny_detection_config()
    config.train.update(steps=40, eval_every=20, checkpoint_every=20)
    straight = train_and_evaluate(config, tmp_path / "straight")
    config.train.stop_after = 20
    train_and_evaluate(config, tmp_path / "resumed")
    config.train.stop_after = 0
    resumed = train_and_evaluate(config, tmp_path / "resumed")
    np.testing.assert_allclose(resumed["loss"], straight["loss"], rtol=1e-5)
    np.testing.assert_allclose(resumed["map"], straight["map"], atol=1e-6)


@pytest.mark.slow
def test_train_py_runs_the_detection_config(tmp_path):
    overrides = [
        "--config.data.train_samples=64",
        "--config.data.val_samples=8",
        "--config.train.steps=4",
        "--config.train.batch_size=4",
        "--config.train.eval_batch_size=4",
        "--config.optim.warmup_steps=1",
        "--config.train.eval_every=4",
        "--config.train.checkpoint_every=4",
        "--config.train.progress=False",
        "--config.compilation_cache=",
        "--config.model.widths=(8,16,32)",
    ]
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--config=configs/det_shapes.py", f"--workdir={tmp_path}", *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mAP@.5" in result.stdout


def test_bad_detection_samples_are_named():
    sample = make_detection_sample(0, "train", 0, max_boxes=8)
    detection.check_example(sample, "sample 0", channels=3, max_boxes=8)
    with pytest.raises(ValueError, match="sample 0: 8 box slots; config.data.max_boxes is 4"):
        detection.check_example(sample, "sample 0", max_boxes=4)
    flipped = dict(sample, boxes=sample["boxes"][:, [2, 1, 0, 3]])
    with pytest.raises(ValueError, match="x0 <= x1"):
        detection.check_example(flipped, "sample 0")
    with pytest.raises(ValueError, match="missing \\['box_mask'\\]"):
        detection.check_example({k: v for k, v in sample.items() if k != "box_mask"}, "sample 0")


def test_detection_config_errors_name_the_key():
    config = tiny_detection_config()
    config.data.name = "voc"
    with pytest.raises(ValueError, match="config.data.name must be one of"):
        detection.make_sources(config)
    config = tiny_detection_config()
    config.data.image_size = (62, 62)
    with pytest.raises(ValueError, match="output_stride"):
        detection.Task(config)


def write_coco(root: Path, split: str, count: int) -> tuple[Path, Path]:
    """Shape-box samples written as a COCO dataset: PNG files and an instances JSON."""
    images_dir = root / split
    images_dir.mkdir(parents=True)
    images, annotations = [], []
    names = det_shapes.get_config().data.class_names
    for index in range(count):
        sample = make_detection_sample(1, split, index)
        Image.fromarray(sample["image"]).save(images_dir / f"{index:04d}.png")
        images.append({"id": 100 + index, "file_name": f"{index:04d}.png", "height": 64, "width": 64})
        for box, kind in zip(sample["boxes"][sample["box_mask"]], sample["classes"][sample["box_mask"]]):
            x0, y0, x1, y1 = map(float, box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": 100 + index,
                    "category_id": 10 * (int(kind) + 1),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": 10 * (c + 1), "name": name} for c, name in enumerate(names)]
    annotations_file = root / f"instances_{split}.json"
    annotations_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return images_dir, annotations_file


@pytest.mark.slow
def test_training_on_a_coco_format_dataset(tmp_path):
    train_images, train_json = write_coco(tmp_path, "train", 32)
    val_images, val_json = write_coco(tmp_path, "val", 8)
    config = tiny_detection_config()
    config.data.update(
        name="coco",
        train_images=str(train_images),
        train_annotations=str(train_json),
        val_images=str(val_images),
        val_annotations=str(val_json),
        class_names=(),
        scale_range=(0.75, 1.25),
        jitter=0.2,
    )
    config.train.update(steps=6, eval_every=6, checkpoint_every=6, log_every=3)
    metrics = train_and_evaluate(config, tmp_path / "run")
    assert set(f"ap/{name}" for name in det_shapes.get_config().data.class_names) <= set(metrics)
    assert np.isfinite(metrics["loss"]) and 0.0 <= metrics["map"] <= 1.0


@pytest.mark.slow
def test_checkify_mode_names_a_box_class_out_of_range(tmp_path):
    import jax
    from jax.experimental import checkify

    from jaxseg.train import parallel
    from jaxseg.train.program import compile_program

    config = tiny_detection_config()
    config.train.checkify = True
    mesh = parallel.make_mesh(config.get("mesh"))
    program = compile_program(config, mesh, detection.Task(config))
    hp = program.place_hp(detection.hyperparameters(config))
    batch = next(detection.make_data(config, tmp_path).train)
    state, metrics = program.train(program.init(), parallel.global_batch(batch, mesh=mesh), hp)
    assert np.isfinite(float(jax.device_get(metrics["loss"])))
    bad = dict(batch, classes=np.where(batch["box_mask"], 9, batch["classes"]).astype(np.int32))
    with pytest.raises(checkify.JaxRuntimeError, match=r"step 1: box classes outside \[0, 4\): min 9, max 9"):
        program.train(state, parallel.global_batch(bad, mesh=mesh), hp)
