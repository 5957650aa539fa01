"""grain pipelines: batches, determinism, resumable iterator state, sharding, padding, augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from jaxseg.data import FolderSource, ShapesSource, balance, eval_batches, train_dataset
from jaxseg.data.augment import augment


def test_train_batches_have_static_shapes_and_dtypes():
    it = iter(train_dataset(ShapesSource(20, size=40), batch_size=4, image_size=(32, 32), seed=0))
    batch = next(it)
    assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (4, 32, 32) and batch["label"].dtype == np.int32


def test_same_seed_same_stream_and_iterator_state_resumes_exactly():
    make = lambda seed: iter(train_dataset(ShapesSource(12, size=32), batch_size=3, image_size=(32, 32), seed=seed))
    a, b, c = make(1), make(1), make(2)
    first = [next(a) for _ in range(3)]
    np.testing.assert_array_equal(first[2]["image"], [next(b) for _ in range(3)][2]["image"])
    assert not np.array_equal(first[0]["image"], next(c)["image"])
    state = a.get_state()
    expected = [next(a) for _ in range(5)]  # crosses an epoch boundary (12 samples / 3)
    resumed = make(1)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])


def test_processes_read_disjoint_shares():
    source = ShapesSource(8, size=32)
    seen = []
    for index in range(2):
        batches = eval_batches(source, batch_size=4, image_size=(32, 32), process_index=index, process_count=2)
        seen.append(np.concatenate([batches[i]["image"] for i in range(len(batches))]))
    assert seen[0].shape[0] == 4 and not any(np.array_equal(x, y) for x in seen[0] for y in seen[1])


def test_eval_batches_pad_the_last_batch():
    batches = eval_batches(ShapesSource(5, size=32), batch_size=4, image_size=(32, 32), ignore_index=255)
    assert len(batches) == 2
    last = batches[1]
    np.testing.assert_array_equal(last["valid"], [True, False, False, False])
    assert np.all(last["label"][1:] == 255) and last["image"].shape == (4, 32, 32, 3)


def test_augmentation_moves_image_and_label_together(image_folder):
    # The folder images encode their labels in the red channel (label * 60); after scaling,
    # cropping and flipping they must still agree wherever the label is not ignored.
    source = FolderSource(image_folder, num_classes=3)
    rng = np.random.default_rng(0)
    for i in range(len(source)):
        for _ in range(3):
            out = augment(source[i], rng, size=(16, 16), scale_range=(0.8, 1.5), jitter=0.0)
            keep = out["label"] != 255
            red = out["image"][..., 0].astype(int)
            # Interior pixels (not on a class edge) keep their exact colour code.
            agree = np.abs(red - out["label"] * 60) <= 30
            assert agree[keep].mean() > 0.8


def test_folder_pipeline_end_to_end_with_distance_maps(image_folder):
    source = FolderSource(image_folder, num_classes=3, split_file="train.txt")
    it = iter(train_dataset(source, batch_size=2, image_size=(16, 16), seed=0, distance_maps_for=3))
    batch = next(it)
    assert batch["image"].shape == (2, 16, 16, 3) and batch["distance"].shape == (2, 16, 16, 3)


def test_class_weights_and_resampling():
    pixels = [900, 90, 10, 0]
    np.testing.assert_allclose(
        balance.class_weights(pixels, "inverse"),
        np.array([1 / 0.9, 1 / 0.09, 1 / 0.01, 0]) / np.mean([1 / 0.9, 1 / 0.09, 1 / 0.01]),
        rtol=1e-6,
    )
    median = balance.class_weights(pixels, "median")
    assert median[1] == pytest.approx(1.0 / np.mean([0.09 / 0.9, 1.0, 0.09 / 0.01]), rel=1e-6)
    present = [[True, False, False, False], [True, True, False, False], [True, False, True, False]]
    factors = balance.repeat_factors(pixels, present, threshold=0.04)
    np.testing.assert_allclose(factors, [1.0, 1.0, 2.0])
    indices = balance.resampled_indices([1.0, 2.0, 1.5], seed=0)
    counts = np.bincount(indices, minlength=3)
    assert counts[0] == 1 and counts[1] == 2 and counts[2] in (1, 2)
    with pytest.raises(ValueError, match="class weighting must be one of"):
        balance.class_weights(pixels, "sqrt")


def test_processes_share_one_global_training_stream():
    # Two processes with batch 2 each hold, step by step, the examples of one process with
    # batch 4, augmented identically: the global batch does not depend on the process count.
    make = lambda index, count, batch: iter(
        train_dataset(  # noqa: E731
            ShapesSource(10, size=32),
            batch_size=batch,
            image_size=(32, 32),
            seed=3,
            jitter=0.2,
            process_index=index,
            process_count=count,
        )
    )
    single, shares = make(0, 1, 4), [make(i, 2, 2) for i in range(2)]
    for _ in range(4):  # crosses an epoch boundary
        whole = next(single)["image"]
        parts = [next(share)["image"] for share in shares]
        np.testing.assert_array_equal(np.concatenate([parts[0], parts[1]]), whole[[0, 2, 1, 3]])


def test_every_process_gets_the_same_number_of_eval_batches():
    source = ShapesSource(9, size=32)  # 5 + 4 samples: the second process ends with padding
    shares = [
        eval_batches(source, batch_size=1, image_size=(32, 32), process_index=i, process_count=2) for i in range(2)
    ]
    assert len(shares[0]) == len(shares[1]) == 5
    assert not shares[1][4]["valid"].any() and shares[0][4]["valid"].all()
    assert sum(int(share[i]["valid"].sum()) for share in shares for i in range(5)) == 9


def test_bad_samples_are_skipped_counted_and_named_when_asked(tmp_path, caplog):
    from jaxseg.data.pipeline import SkippingSource
    from tests.data.conftest import write_folder

    write_folder(tmp_path / "data", count=6, size=(16, 16))
    broken = sorted((tmp_path / "data" / "images").iterdir())[1]
    broken.write_bytes(broken.read_bytes()[:100])  # truncated
    source = SkippingSource(FolderSource(tmp_path / "data", num_classes=3))
    with caplog.at_level("WARNING", logger="jaxseg"):
        it = iter(train_dataset(source, batch_size=2, image_size=(16, 16), seed=0, num_threads=1))
        batches = [next(it) for _ in range(6)]  # two epochs of the 5 good samples
    assert all(b["image"].shape == (2, 16, 16, 3) for b in batches)
    assert source.skipped == 1 and broken.name in caplog.text and "cannot read the image" in caplog.text
    state = it.get_state()
    expected = next(it)
    resumed = iter(train_dataset(source, batch_size=2, image_size=(16, 16), seed=0, num_threads=1))
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["image"], expected["image"])
    val = eval_batches(
        SkippingSource(FolderSource(tmp_path / "data", num_classes=3)), batch_size=4, image_size=(16, 16)
    )
    assert [int(val[i]["valid"].sum()) for i in range(len(val))] == [3, 2]  # the bad one is padding


class _Samples:
    def __init__(self, *samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index]


@pytest.mark.parametrize(
    "sample, message",
    [
        (
            {"image": np.zeros((8, 8), np.float32), "label": np.zeros((8, 8), np.int32)},
            r"sample 0 of _Samples: image must be uint8 \[H, W, C\]; got float32 \[8, 8\]",
        ),
        (
            {"image": np.zeros((8, 8, 3), np.uint8), "label": np.zeros((8, 6), np.int32)},
            r"sample 0 of _Samples: label must be integer \[H, W\] = \[8, 8\]; got int32 \[8, 6\]",
        ),
        (
            {"image": np.zeros((8, 8, 3), np.uint8), "label": np.zeros((8, 8), np.float32)},
            r"label must be integer \[H, W\] = \[8, 8\]; got float32",
        ),
        (
            {"image": np.zeros((8, 8, 4), np.uint8), "label": np.zeros((8, 8), np.int32)},
            r"image has 4 channels; config.data.mean/std name 3",
        ),
        ({"pixels": np.zeros((8, 8, 3), np.uint8)}, r"a sample needs 'image' and 'label'; got keys \['pixels'\]"),
    ],
)
def test_samples_of_the_wrong_dtype_or_rank_are_errors_naming_the_sample(sample, message):
    from jaxseg.data.pipeline import CheckedSource

    with pytest.raises(ValueError, match=message):
        CheckedSource(_Samples(sample), channels=3)[0]


def test_checked_folder_errors_name_the_image_file(tmp_path):
    from jaxseg.data.pipeline import CheckedSource
    from tests.data.conftest import write_folder

    write_folder(tmp_path / "data", count=2, size=(16, 16))
    source = CheckedSource(FolderSource(tmp_path / "data", num_classes=3), channels=4)
    with pytest.raises(ValueError, match=r"sample 1 of FolderSource \(.*img_001\.jpg\): image has 3 channels"):
        source[1]
