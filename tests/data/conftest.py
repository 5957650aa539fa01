"""A small image/mask folder written by the tests (VOC-like layout, with an ignore value)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


def write_folder(root, *, count=6, size=(24, 32), num_classes=3, depth=False, seed=0):
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    if depth:
        (root / "depth").mkdir()
    stems = []
    for i in range(count):
        blocks = rng.integers(0, num_classes, (size[0] // 8, size[1] // 8))
        mask = np.kron(blocks, np.ones((8, 8), np.int64)).astype(np.uint8)  # 8x8 blocks of one class
        mask[0, :] = 255  # an unlabelled border row
        # The image encodes its label, so a model can learn it and augmentation can be checked.
        code = mask.astype(np.int64)
        image = np.stack([code * 60 % 256, (code * 90 + 20) % 256, np.full(size, 128)], -1).astype(np.uint8)
        stem = f"img_{i:03d}"
        suffix = ".jpg" if i % 2 else ".png"
        Image.fromarray(image).save(root / "images" / f"{stem}{suffix}", quality=100)
        palette_mask = Image.fromarray(mask, mode="P")
        palette_mask.putpalette([v for c in range(256) for v in (c, c, c)])
        palette_mask.save(root / "masks" / f"{stem}.png")
        if depth:
            Image.fromarray(rng.integers(0, 256, size).astype(np.uint8)).save(root / "depth" / f"{stem}.png")
        stems.append(stem)
    (root / "train.txt").write_text("\n".join(stems[:4]) + "\n")
    (root / "val.txt").write_text("\n".join(stems[4:]) + "\n")
    return stems


@pytest.fixture
def image_folder(tmp_path):
    write_folder(tmp_path / "data", depth=True)
    return tmp_path / "data"
