"""Host-side augmentation of one (image, label) pair with an explicit NumPy generator.

Geometric transforms move image and label together (bilinear for the image, nearest for the
label); photometric jitter touches the colour channels only. Areas with no source pixel get
image 0 and the ignore label, so they contribute nothing to the loss.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize(image, label, size):
    """Resize `image` `[H, W, C]` (bilinear, per channel) and `label` `[H, W]` (nearest) to `size`."""
    height, width = size
    channels = [
        np.asarray(Image.fromarray(image[..., c].astype(np.float32), mode="F").resize((width, height), Image.BILINEAR))
        for c in range(image.shape[-1])
    ]
    resized = np.stack(channels, axis=-1)
    if np.issubdtype(image.dtype, np.integer):
        resized = np.clip(resized.round(), 0, np.iinfo(image.dtype).max)
    resized = resized.astype(image.dtype)
    if label is None:
        return resized, None
    label = np.asarray(Image.fromarray(label.astype(np.int32), mode="I").resize((width, height), Image.NEAREST))
    return resized, label


def random_scale_crop(image, label, rng, *, size, scale_range=(0.75, 1.25), ignore_index=255):
    """Rescale by a random factor, then take a random `size` crop (padding where the scaled
    image is smaller: image 0, label `ignore_index`)."""
    height, width = size
    scale = rng.uniform(*scale_range)
    scaled_size = (max(1, int(round(image.shape[0] * scale))), max(1, int(round(image.shape[1] * scale))))
    if scaled_size != image.shape[:2]:
        image, label = resize(image, label, scaled_size)
    pad_h, pad_w = max(0, height - image.shape[0]), max(0, width - image.shape[1])
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
        label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=ignore_index)
    top = int(rng.integers(0, image.shape[0] - height + 1))
    left = int(rng.integers(0, image.shape[1] - width + 1))
    return image[top : top + height, left : left + width], label[top : top + height, left : left + width]


def photometric_jitter(image, rng, *, brightness=0.2, contrast=0.2, saturation=0.2, colour_channels=3):
    """Random brightness, contrast and saturation on the first `colour_channels` channels."""
    pixels = image.astype(np.float32)
    colour = pixels[..., :colour_channels]
    colour = colour * rng.uniform(1 - brightness, 1 + brightness)
    mean = colour.mean()
    colour = (colour - mean) * rng.uniform(1 - contrast, 1 + contrast) + mean
    grey = colour.mean(axis=-1, keepdims=True)
    colour = (colour - grey) * rng.uniform(1 - saturation, 1 + saturation) + grey
    pixels[..., :colour_channels] = colour
    if np.issubdtype(image.dtype, np.integer):
        pixels = np.clip(pixels.round(), 0, np.iinfo(image.dtype).max)
    return pixels.astype(image.dtype)


def augment(example, rng, *, size, scale_range=(0.75, 1.25), flip=True, jitter=0.2, ignore_index=255):
    """The training augmentation: random scale + crop to `size`, horizontal flip, colour jitter."""
    image, label = example["image"], example["label"]
    image, label = random_scale_crop(image, label, rng, size=size, scale_range=scale_range, ignore_index=ignore_index)
    if flip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    if jitter > 0:
        image = photometric_jitter(
            image, rng, brightness=jitter, contrast=jitter, saturation=jitter, colour_channels=min(3, image.shape[-1])
        )
    return {"image": np.ascontiguousarray(image), "label": np.ascontiguousarray(label).astype(np.int32)}


def fit(example, *, size):
    """Evaluation preprocessing: resize to `size` if needed (no randomness)."""
    image, label = example["image"], example["label"]
    if image.shape[:2] != tuple(size):
        image, label = resize(image, label, size)
    return {"image": image, "label": np.asarray(label).astype(np.int32)}
