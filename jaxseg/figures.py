"""PNG figures: predicted masks and boxes, training curves; and `read_metrics`, the reader of
the `metrics.jsonl` records the curves and the ablation report are drawn from.

Below the tasks and the trainer (it imports NumPy, and matplotlib / Pillow when drawing), so
imports run one way.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def read_metrics(workdir) -> list[dict]:
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def palette(num_classes: int) -> np.ndarray:
    """`[C + 1, 3]` uint8 colours: the Pascal VOC bit-pattern palette; the last row (ignored) is white."""
    colours = np.zeros((num_classes + 1, 3), np.uint8)
    for index in range(num_classes):
        r = g = b = 0
        value = index
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        colours[index] = (r, g, b)
    colours[num_classes] = 255
    return colours


def colourise(mask, num_classes: int, ignore_index=None) -> np.ndarray:
    """Class ids `[H, W]` -> RGB uint8 `[H, W, 3]` (ignored and out-of-range ids white)."""
    mask = np.asarray(mask).astype(np.int64)
    index = np.where((mask >= 0) & (mask < num_classes), mask, num_classes)
    if ignore_index is not None:
        index = np.where(mask == ignore_index, num_classes, index)
    return palette(num_classes)[index]


def save_prediction_figure(
    path, images, labels, predictions, *, num_classes: int, ignore_index=None, class_names=None, max_images: int = 6
) -> None:
    """A PNG grid: one column per image, rows image / ground truth / prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(max_images, len(images))
    figure, axes = plt.subplots(3, count, figsize=(2.2 * count, 6.6), squeeze=False)
    for i in range(count):
        image = np.asarray(images[i])[..., :3]
        rows = (image, colourise(labels[i], num_classes, ignore_index), colourise(predictions[i], num_classes))
        for row, (panel, title) in enumerate(zip(rows, ("image", "ground truth", "prediction"))):
            axes[row, i].imshow(
                panel.squeeze() if panel.shape[-1] == 1 else panel, cmap="gray" if panel.shape[-1] == 1 else None
            )
            axes[row, i].axis("off")
            if i == 0:
                axes[row, i].set_title(title, fontsize=9, loc="left")
    if class_names:
        colours = palette(num_classes) / 255.0
        handles = [plt.Rectangle((0, 0), 1, 1, color=colours[c]) for c in range(num_classes)]
        figure.legend(handles, class_names, loc="lower center", ncol=min(num_classes, 8), fontsize=8)
    figure.tight_layout(rect=(0, 0.05 if class_names else 0, 1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def save_curves(path, records: list[dict], keys=("loss", "miou")) -> None:
    """Training and validation curves of `keys` from `metrics.jsonl` records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for split in ("train", "val"):
            points = [(r["step"], r[key]) for r in records if r.get("split") == split and r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), label=split, marker="o" if split == "val" else None, markersize=3)
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


BOX_COLOURS = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 190),
)


def draw_boxes(image, boxes, classes, *, scores=None, class_names=None, scale: int = 1) -> np.ndarray:
    """RGB uint8 `image` (enlarged `scale` times, nearest) with xyxy `boxes` drawn in a colour
    per class and labelled with the class name (and score)."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(np.asarray(image)[..., :3].astype(np.uint8))
    if scale != 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(picture)
    for index, (box, kind) in enumerate(zip(np.asarray(boxes, np.float64), np.asarray(classes))):
        colour = BOX_COLOURS[int(kind) % len(BOX_COLOURS)]
        x0, y0, x1, y1 = (box * scale).tolist()
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=colour, width=max(1, scale // 2))
        text = class_names[int(kind)] if class_names else str(int(kind))
        if scores is not None:
            text += f" {float(scores[index]):.2f}"
        draw.text((x0 + 2, max(0.0, y0 - 11)), text, fill=colour)
    return np.asarray(picture)


def save_detection_figure(
    path, images, truth, detections, *, class_names=None, max_images: int = 6, scale: int = 4, min_score: float = 0.3
) -> None:
    """A PNG grid: one column per image, rows ground-truth boxes / detections scoring at least
    `min_score` (with their scores).

    `truth` holds `boxes`, `classes`, `box_mask` `[B, M, ...]`; `detections` has `boxes`,
    `scores`, `classes` and `mask` `[B, K, ...]` (e.g. `jaxseg.ops.fcos.Detections`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(max_images, len(images))
    figure, axes = plt.subplots(2, count, figsize=(2.6 * count, 5.4), squeeze=False)
    for i in range(count):
        real = np.asarray(truth["box_mask"][i], bool)
        found = np.asarray(detections.mask[i], bool) & (np.asarray(detections.scores[i]) >= min_score)
        panels = (
            draw_boxes(
                images[i], truth["boxes"][i][real], truth["classes"][i][real], class_names=class_names, scale=scale
            ),
            draw_boxes(
                images[i],
                detections.boxes[i][found],
                detections.classes[i][found],
                scores=detections.scores[i][found],
                class_names=class_names,
                scale=scale,
            ),
        )
        for row, (panel, title) in enumerate(zip(panels, ("ground truth", "detections"))):
            axes[row, i].imshow(panel)
            axes[row, i].axis("off")
            if i == 0:
                axes[row, i].set_title(title, fontsize=9, loc="left")
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
