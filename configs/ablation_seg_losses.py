"""Seven segmentation losses compared in one program on the shapes data.

    python train.py --config=configs/ablation_seg_losses.py --workdir=runs/ablation

Every member trains the default U-Net from the same initialisation on the same batches; only
the loss differs. Results: WORKDIR/ablation.md and WORKDIR/ablation.png (docs/ablations.md).
"""

from configs import seg_shapes_unet


def get_config():
    config = seg_shapes_unet.get_config()
    config.ablation.variants = {
        "ce": {"loss": {"weights": {"ce": 1.0}}},
        "ce+dice": {"loss": {"weights": {"ce": 1.0, "dice": 1.0}}},
        "dice": {"loss": {"weights": {"dice": 1.0}}},
        "focal": {"loss": {"weights": {"focal": 1.0}, "focal_gamma": 2.0}},
        "ce,median-weighted": {"loss": {"weights": {"ce": 1.0}, "class_weighting": "median"}},
        "ce+lovasz": {"loss": {"weights": {"ce": 1.0, "lovasz": 1.0}}},
        "ce+gradient": {"loss": {"weights": {"ce": 1.0, "gradient": 1.0}}},
    }
    config.train.steps = 1000
    config.train.eval_every = 250
    config.train.checkpoint_every = 250
    config.optim.warmup_steps = 100
    return config
