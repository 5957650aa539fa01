"""Predict for image files: `python -m jaxseg.predict --workdir=DIR IMAGE... --out=DIR`.

Segmentation writes `<stem>_mask.png` (colour-coded) and `<stem>_labels.png` (class ids) per
image. Images of any size work: the model sees windows of its training size that overlap by
`--overlap`, their softmax probabilities are averaged where they overlap, and images smaller
than a window are padded.

Detection writes `<stem>_boxes.png` (the image with its detections drawn) and
`<stem>_boxes.json` (boxes in the image's pixel coordinates, classes, scores): the image is
resized to the training size, and the boxes are scaled back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from absl import app, flags
from absl import logging as absl_logging
from PIL import Image

FLAGS = flags.FLAGS


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets covering `[0, length)` with windows of `window`, the last one flush right."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


def sliding_window_probabilities(image, logits_fn, *, window, num_classes: int, overlap=0.5, batch_size=16):
    """Class probabilities `[H, W, C]` of a uint8 image `[H, W, C_in]` of any size."""
    import jax

    height, width = image.shape[:2]
    win_h, win_w = window
    padded = np.pad(image, ((0, max(0, win_h - height)), (0, max(0, win_w - width)), (0, 0)))
    stride_h = max(1, int(win_h * (1 - overlap)))
    stride_w = max(1, int(win_w * (1 - overlap)))
    corners = [
        (y, x)
        for y in window_starts(padded.shape[0], win_h, stride_h)
        for x in window_starts(padded.shape[1], win_w, stride_w)
    ]
    total = np.zeros(padded.shape[:2] + (num_classes,), np.float32)
    hits = np.zeros(padded.shape[:2] + (1,), np.float32)
    for begin in range(0, len(corners), batch_size):
        chunk = corners[begin : begin + batch_size]
        windows = np.stack([padded[y : y + win_h, x : x + win_w] for y, x in chunk])
        if len(chunk) < batch_size:  # one compiled shape for every call
            windows = np.concatenate([windows, np.zeros((batch_size - len(chunk),) + windows.shape[1:], windows.dtype)])
        probabilities = np.asarray(jax.nn.softmax(logits_fn(windows).astype("float32"), axis=-1))
        for (y, x), p in zip(chunk, probabilities):
            total[y : y + win_h, x : x + win_w] += p
            hits[y : y + win_h, x : x + win_w] += 1
    return (total / hits)[:height, :width]


def detect_files(restored, paths, out, *, min_score: float = 0.3) -> list[Path]:
    """Detections of each image file, drawn and listed (boxes in the file's pixel coordinates)."""
    import jax
    import jax.numpy as jnp

    from jaxseg.data.augment import resize
    from jaxseg.figures import draw_boxes
    from jaxseg.train.inference import predict_fn

    config, task = restored.config, restored.task
    height, width = config.data.image_size
    detect = predict_fn(restored)
    names = list(task.class_names)
    written = []
    for path in map(Path, paths):
        image = np.asarray(Image.open(path).convert("RGB"))
        resized, _ = resize(image, None, (height, width))
        detections = jax.device_get(detect(restored.state, {"image": jnp.asarray(resized[None])}))
        keep = detections.mask[0] & (detections.scores[0] >= min_score)
        factor = np.asarray([image.shape[1] / width, image.shape[0] / height] * 2, np.float32)
        boxes, classes, scores = (
            detections.boxes[0][keep] * factor,
            detections.classes[0][keep],
            detections.scores[0][keep],
        )
        scale = max(1, 256 // max(image.shape[:2]))
        Image.fromarray(draw_boxes(image, boxes, classes, scores=scores, class_names=names, scale=scale)).save(
            out / f"{path.stem}_boxes.png"
        )
        listed = [
            {
                "box_xyxy": [round(float(v), 2) for v in box],
                "class": names[int(c)],
                "class_id": int(c),
                "score": round(float(s), 4),
            }
            for box, c, s in zip(boxes, classes, scores)
        ]
        (out / f"{path.stem}_boxes.json").write_text(json.dumps(listed, indent=1) + "\n")
        written.append(out / f"{path.stem}_boxes.png")
    return written


def predict_files(workdir, paths, out, *, step="best", overlap=0.5, batch_size=16, min_score=0.3) -> list[Path]:
    from jaxseg.figures import colourise
    from jaxseg.train.inference import logits_fn, restore

    restored = restore(workdir, step)
    config = restored.config
    if config.get("task") == "detection":
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        return detect_files(restored, paths, out, min_score=min_score)
    channels = len(config.data.mean)
    if channels != 3:
        raise ValueError(f"the model expects {channels} input channels; predict reads RGB image files")
    if not 0 <= overlap < 1:
        raise ValueError(f"--overlap must be in [0, 1); got {overlap}")
    apply = logits_fn(restored)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in map(Path, paths):
        image = np.asarray(Image.open(path).convert("RGB"))
        probabilities = sliding_window_probabilities(
            image,
            apply,
            window=tuple(config.data.image_size),
            num_classes=config.num_classes,
            overlap=overlap,
            batch_size=batch_size,
        )
        labels = probabilities.argmax(-1).astype(np.uint8)
        Image.fromarray(colourise(labels, config.num_classes)).save(out / f"{path.stem}_mask.png")
        Image.fromarray(labels, mode="L").save(out / f"{path.stem}_labels.png")
        written.append(out / f"{path.stem}_mask.png")
    return written


def define_flags() -> None:
    """Command-line flags, defined only when run as a program (the module stays importable)."""
    flags.DEFINE_string("workdir", None, "Training directory with checkpoints/.", required=True)
    flags.DEFINE_string("out", None, "Output directory for the mask (or box) PNGs.", required=True)
    flags.DEFINE_string("step", "best", '"best" (by validation mIoU), "latest" or a step number.')
    flags.DEFINE_float("overlap", 0.5, "Fraction of a window shared with its neighbour, in [0, 1).")
    flags.DEFINE_integer("batch_size", 16, "Windows per forward pass.")
    flags.DEFINE_float("min_score", 0.3, "Detection only: the lowest score of a box drawn and listed.")


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("give one or more image files")
    absl_logging.set_verbosity(absl_logging.WARNING)
    for path in predict_files(
        FLAGS.workdir,
        argv[1:],
        FLAGS.out,
        step=FLAGS.step,
        overlap=FLAGS.overlap,
        batch_size=FLAGS.batch_size,
        min_score=FLAGS.min_score,
    ):
        print(path)


if __name__ == "__main__":
    define_flags()
    app.run(main)
