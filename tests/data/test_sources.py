"""The synthetic shapes source and the image-folder source."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jaxseg.data import FolderSource, ShapesSource
from jaxseg.data.shapes import CLASSES
from tests.data.conftest import write_folder


def test_shapes_are_deterministic_and_split_dependent():
    train = ShapesSource(10, split="train", seed=3)
    again = ShapesSource(10, split="train", seed=3)
    val = ShapesSource(10, split="val", seed=3)
    np.testing.assert_array_equal(train[4]["image"], again[4]["image"])
    np.testing.assert_array_equal(train[4]["label"], again[4]["label"])
    assert not np.array_equal(train[4]["image"], val[4]["image"])
    sample = train[0]
    assert sample["image"].shape == (64, 64, 3) and sample["image"].dtype == np.uint8
    assert sample["label"].shape == (64, 64) and sample["label"].max() < len(CLASSES)


def test_shapes_cover_every_class_and_optional_depth():
    source = ShapesSource(50, depth=True, size=48)
    seen = np.zeros(len(CLASSES), bool)
    for i in range(len(source)):
        seen[np.unique(source[i]["label"])] = True
    assert seen.all()
    assert source[0]["image"].shape == (48, 48, 4)
    with pytest.raises(IndexError):
        source[50]


def test_folder_source_reads_pairs_extra_channels_and_splits(image_folder):
    source = FolderSource(image_folder, num_classes=3, extra_dirs=("depth",), split_file="train.txt")
    assert len(source) == 4
    sample = source[1]  # a JPEG image with a palette mask
    assert sample["image"].shape == (24, 32, 4)
    assert sample["label"].dtype == np.int32
    assert set(np.unique(sample["label"])) <= {0, 1, 2, 255}


def test_folder_errors_name_the_file(image_folder):
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(image_folder / "masks" / "img_000.png")
    source = FolderSource(image_folder, num_classes=3)
    with pytest.raises(
        ValueError, match=r"img_000\.png: mask size \(10, 10\) differs from image img_000\.png \(24, 32\)"
    ):
        source[0]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FolderSource(image_folder / "nothing", num_classes=3)
    (image_folder / "bad.txt").write_text("img_000\nimg_999\n")
    with pytest.raises(FileNotFoundError, match=r"bad\.txt: no image/mask pair for \['img_999'\]"):
        FolderSource(image_folder, num_classes=3, split_file="bad.txt")


def test_a_corrupt_image_is_an_error_naming_the_file(tmp_path):
    write_folder(tmp_path / "data")
    broken = sorted((tmp_path / "data" / "images").iterdir())[1]
    broken.write_bytes(broken.read_bytes()[:100])  # truncated
    source = FolderSource(tmp_path / "data", num_classes=3)
    with pytest.raises(ValueError, match=f"{broken.name}: cannot read the image"):
        source[1]


def test_labels_outside_the_classes_are_an_error_naming_the_file_and_values(tmp_path):
    write_folder(tmp_path / "data")
    mask_path = sorted((tmp_path / "data" / "masks").iterdir())[0]
    mask = np.asarray(Image.open(mask_path)).copy()
    mask[5, 5], mask[6, 6] = 7, 9
    Image.fromarray(mask).save(mask_path)
    source = FolderSource(tmp_path / "data", num_classes=3, ignore_index=255)
    with pytest.raises(ValueError, match=rf"{mask_path.name}: label values \[7, 9\] are outside \[0, 3\)"):
        source[0]
