"""The COCO-format detection source on a tiny dataset written by the tests."""

from __future__ import annotations

import json
import logging

import grain
import numpy as np
import pytest
from PIL import Image

from jaxseg.data.box_augment import fit_detection
from jaxseg.data.coco import CocoSource
from jaxseg.metrics.detection import CocoEvaluator

# Category ids out of order and with gaps, as in COCO: 3 -> class 0, 7 -> 1, 12 -> 2.
CATEGORIES = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}, {"id": 12, "name": "bird"}]


def write_coco(root, *, annotations=None, images=None):
    """`root/images/{a,b,c}.png` and `root/instances.json`; returns both paths."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    sizes = {"a.png": (20, 30), "b.png": (16, 16), "c.png": (12, 8)}
    for i, (name, (height, width)) in enumerate(sizes.items()):
        pixels = np.full((height, width, 3), 40 * (i + 1), np.uint8)
        pixels[0, 0] = (1, 2, 3)
        Image.fromarray(pixels).save(root / "images" / name)
    if images is None:
        images = [
            {"id": 10 + i, "file_name": name, "height": h, "width": w} for i, (name, (h, w)) in enumerate(sizes.items())
        ]
    if annotations is None:
        annotations = [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [2, 3, 10, 5], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [0, 0, 30, 20], "iscrowd": 0},
            {"id": 3, "image_id": 10, "category_id": 12, "bbox": [1, 1, 5, 5], "iscrowd": 1},  # dropped: crowd
            {"id": 4, "image_id": 10, "category_id": 3, "bbox": [5, 5, 0, 4], "iscrowd": 0},  # dropped: no width
            {"id": 5, "image_id": 11, "category_id": 12, "bbox": [14.5, 15.5, 2, 1]},  # half a pixel over: clipped
        ]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return root / "images", path


def test_samples_boxes_classes_and_padding(tmp_path):
    source = CocoSource(*write_coco(tmp_path), max_boxes=3)
    assert len(source) == 3
    assert source.num_classes == 3 and source.class_names == ("cat", "dog", "bird")
    assert source.category_ids == [3, 7, 12] and source.image_ids == [10, 11, 12]
    first = source[0]
    assert set(first) == {"image", "boxes", "classes", "box_mask"}
    assert first["image"].shape == (20, 30, 3) and first["image"].dtype == np.uint8
    np.testing.assert_array_equal(first["image"][0, 0], (1, 2, 3))
    assert first["boxes"].dtype == np.float32 and first["classes"].dtype == np.int32
    np.testing.assert_array_equal(first["boxes"], [[2, 3, 12, 8], [0, 0, 30, 20], [0, 0, 0, 0]])
    np.testing.assert_array_equal(first["classes"], [1, 0, -1])
    np.testing.assert_array_equal(first["box_mask"], [True, True, False])
    second = source[1]
    np.testing.assert_array_equal(second["boxes"][0], [14.5, 15.5, 16, 16])
    assert second["classes"][0] == 2 and second["box_mask"].sum() == 1
    empty = source[2]  # an image with no annotations: all padding
    assert empty["image"].shape == (12, 8, 3) and not empty["box_mask"].any()
    np.testing.assert_array_equal(empty["classes"], -1)


def test_class_names_replace_the_category_names(tmp_path):
    images_dir, annotations = write_coco(tmp_path)
    assert CocoSource(images_dir, annotations, class_names=["c", "d", "b"]).class_names == ("c", "d", "b")
    with pytest.raises(ValueError, match=r"instances\.json: 3 categories but 2 class_names"):
        CocoSource(images_dir, annotations, class_names=["c", "d"])


def test_more_than_max_boxes_keeps_the_first_and_warns_once(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="jaxseg"):
        source = CocoSource(*write_coco(tmp_path), max_boxes=1)
    warnings = [r.getMessage() for r in caplog.records if "max_boxes" in r.getMessage()]
    assert len(warnings) == 1
    assert "instances.json: 1 images have more than max_boxes=1 boxes (the first:" in warnings[0]
    assert "a.png with 2)" in warnings[0]
    np.testing.assert_array_equal(source[0]["boxes"], [[2, 3, 12, 8]])
    np.testing.assert_array_equal(source[0]["classes"], [1])


def test_samples_feed_a_grain_pipeline_and_the_evaluator(tmp_path):
    source = CocoSource(*write_coco(tmp_path), max_boxes=4)
    batch = grain.MapDataset.source(source).map(lambda e: fit_detection(e, size=(32, 32))).batch(3)[0]
    assert batch["image"].shape == (3, 32, 32, 3) and batch["boxes"].shape == (3, 4, 4)
    np.testing.assert_allclose(batch["boxes"][0, 0], [2 * 32 / 30, 3 * 32 / 20, 12 * 32 / 30, 8 * 32 / 20], rtol=1e-6)
    evaluator = CocoEvaluator(source.class_names)
    scores = np.where(batch["box_mask"], 0.9, 0.0)
    evaluator.add(
        batch["boxes"],
        batch["classes"],
        batch["box_mask"],
        batch["boxes"],
        scores,
        batch["classes"],
        batch["box_mask"],
        image_ids=source.image_ids,
    )
    assert evaluator.result()["map"] == pytest.approx(1.0)


def test_missing_and_unreadable_images_name_the_file(tmp_path):
    images_dir, annotations = write_coco(tmp_path)
    (images_dir / "b.png").unlink()
    (images_dir / "c.png").write_bytes(b"not a png")
    source = CocoSource(images_dir, annotations)
    with pytest.raises(FileNotFoundError, match=r"b\.png: image file not found \(image id 11 in .*instances\.json\)"):
        source[1]
    with pytest.raises(ValueError, match=r"c\.png: cannot read the image"):
        source[2]
    with pytest.raises(FileNotFoundError, match="images folder .*nowhere does not exist"):
        CocoSource(tmp_path / "nowhere", annotations)


@pytest.mark.parametrize(
    "annotation, message",
    [
        (
            {"id": 9, "image_id": 99, "category_id": 3, "bbox": [0, 0, 1, 1]},
            r"instances\.json: annotation 9 refers to image id 99, which is not in 'images'",
        ),
        (
            {"id": 9, "image_id": 10, "category_id": 4, "bbox": [0, 0, 1, 1]},
            r"instances\.json: annotation 9 refers to category id 4, which is not in 'categories' \[3, 7, 12\]",
        ),
        (
            {"id": 9, "image_id": 10, "category_id": 3, "bbox": [0, 0, -1, 1]},
            r"instances\.json: annotation 9: bbox must be \[x, y, width, height\] with sizes >= 0; got \[0, 0, -1, 1\]",
        ),
    ],
)
def test_annotations_referring_to_nothing_are_errors_naming_the_file(tmp_path, annotation, message):
    with pytest.raises(ValueError, match=message):
        CocoSource(*write_coco(tmp_path, annotations=[annotation]))


def test_a_box_more_than_a_pixel_outside_is_an_error(tmp_path):
    annotations = [{"id": 9, "image_id": 11, "category_id": 3, "bbox": [10, 10, 7.5, 2]}]  # x1 = 17.5 > 16 + 1
    source = CocoSource(*write_coco(tmp_path, annotations=annotations))
    with pytest.raises(
        ValueError,
        match=r"b\.png: box \[10\.0, 10\.0, 17\.5, 12\.0\] \(xyxy\) of annotation 9 in "
        r".*instances\.json lies more than a pixel outside the 16x16 image",
    ):
        source[1]


def test_a_size_differing_from_the_json_is_an_error(tmp_path):
    images = [{"id": 10, "file_name": "a.png", "height": 30, "width": 20}]
    source = CocoSource(*write_coco(tmp_path, images=images, annotations=[]))
    with pytest.raises(ValueError, match=r"a\.png: image is 20x30 but .*instances\.json says 30x20"):
        source[0]


def test_malformed_json_is_an_error_naming_the_file(tmp_path):
    images_dir, annotations = write_coco(tmp_path)
    annotations.write_text('{"images": [}')
    with pytest.raises(ValueError, match=r"instances\.json: not valid JSON \(Expecting value: line 1"):
        CocoSource(images_dir, annotations)
    annotations.write_text('{"images": []}')
    with pytest.raises(ValueError, match=r"instances\.json: a COCO instances file needs .* missing \['categories'\]"):
        CocoSource(images_dir, annotations)
    annotations.write_text('{"images": [{"id": 1}], "categories": []}')
    with pytest.raises(ValueError, match=r"instances\.json: images\[0\] needs \['id', 'file_name'\]"):
        CocoSource(images_dir, annotations)
    with pytest.raises(FileNotFoundError, match=r"absent\.json"):
        CocoSource(images_dir, tmp_path / "absent.json")
