"""Real data from a folder: `images/` and `masks/` with matching file stems.

The layout of Pascal VOC (`JPEGImages/` + `SegmentationClass/`, pass the folder names) and
Oxford-IIIT Pets (`images/` + `annotations/trimaps/`). Images are PNG or JPEG; masks are PNG
of class ids (palette or greyscale), with an ignore value such as 255. Extra modalities
(e.g. `depth/` greyscale PNGs with the same stems) are appended as input channels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _index(folder: Path, suffixes) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder {folder} does not exist")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in suffixes}


class FolderSource:
    """A grain random-access source over `root/images_dir/*` paired with `root/masks_dir/*.png`.

    Args:
      root: dataset folder.
      images_dir: sub-folder of the images.
      masks_dir: sub-folder of the masks.
      extra_dirs: sub-folders of extra single-channel modalities, appended after RGB.
      split_file: optional text file of stems (one per line), e.g. VOC's `train.txt`.
      num_classes: number of classes; mask values must be in `[0, C)` or `ignore_index`.
      ignore_index: mask value that marks unlabelled pixels.
      class_names: optional names for logs and figures.
    """

    def __init__(
        self,
        root,
        *,
        num_classes: int,
        images_dir: str = "images",
        masks_dir: str = "masks",
        extra_dirs: Sequence[str] = (),
        split_file: str | None = None,
        ignore_index: int | None = 255,
        class_names: Sequence[str] | None = None,
    ):
        self.root = Path(root)
        images = _index(self.root / images_dir, IMAGE_SUFFIXES)
        masks = _index(self.root / masks_dir, (".png",))
        extras = [_index(self.root / name, IMAGE_SUFFIXES) for name in extra_dirs]
        stems = sorted(set(images) & set(masks))
        if split_file is not None:
            wanted = [line.strip() for line in (self.root / split_file).read_text().splitlines() if line.strip()]
            missing = [s for s in wanted if s not in images or s not in masks]
            if missing:
                raise FileNotFoundError(f"{split_file}: no image/mask pair for {missing[:5]} ({len(missing)} missing)")
            stems = wanted
        if not stems:
            raise FileNotFoundError(
                f"no image/mask pairs with matching stems under {self.root}/{{{images_dir},{masks_dir}}}"
            )
        for name, extra in zip(extra_dirs, extras):
            missing = [s for s in stems if s not in extra]
            if missing:
                raise FileNotFoundError(f"{self.root / name}: no file for {missing[:5]} ({len(missing)} missing)")
        self.items = [(images[s], masks[s], [extra[s] for extra in extras]) for s in stems]
        self.stems = stems
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = tuple(class_names) if class_names else tuple(f"class_{i}" for i in range(num_classes))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        image_path, mask_path, extra_paths = self.items[index]
        image = np.asarray(_open(image_path).convert("RGB"))
        mask = np.asarray(_open(mask_path))  # palette PNGs give their indices
        if mask.ndim != 2:
            raise ValueError(f"{mask_path}: masks must be single-channel class ids; got shape {mask.shape}")
        if mask.shape != image.shape[:2]:
            raise ValueError(
                f"{mask_path}: mask size {mask.shape} differs from image {image_path.name} {image.shape[:2]}"
            )
        labelled = mask != self.ignore_index if self.ignore_index is not None else np.ones(mask.shape, bool)
        outside = labelled & ((mask < 0) | (mask >= self.num_classes))
        if outside.any():
            raise ValueError(
                f"{mask_path}: label values {sorted(set(np.unique(mask[outside]).tolist()))[:10]} are outside "
                f"[0, {self.num_classes}) and not the ignore value {self.ignore_index}"
            )
        channels = [image]
        for path in extra_paths:
            extra = np.asarray(_open(path).convert("L"))
            if extra.shape != image.shape[:2]:
                raise ValueError(f"{path}: size {extra.shape} differs from image {image_path.name} {image.shape[:2]}")
            channels.append(extra[..., None])
        return {"image": np.concatenate(channels, axis=-1), "label": mask.astype(np.int32)}

    def __repr__(self) -> str:
        return f"FolderSource({self.root}, {len(self)} samples, {self.num_classes} classes)"


def _open(path):
    """PIL's image, decoded now, or an error naming the file."""
    try:
        image = Image.open(path)
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"{path}: cannot read the image ({error})") from error
    return image
