"""A tiny segmentation config: a few seconds per run on a 2-core CPU."""

from __future__ import annotations

from configs import seg_shapes_unet


def tiny_config(compilation_cache: str = ""):
    config = seg_shapes_unet.get_config()
    config.compilation_cache = compilation_cache
    config.tensorboard = False
    config.data.train_samples = 32
    config.data.val_samples = 6
    config.data.source_size = 32
    config.data.image_size = (32, 32)
    config.data.num_threads = 1
    config.model.depth = 2
    config.model.base_width = 4
    config.optim.warmup_steps = 2
    config.train.update(steps=8, batch_size=4, eval_batch_size=4, log_every=2, eval_every=4,
                        checkpoint_every=4, progress=False)
    return config
