"""U-Net on the synthetic shapes data: the default config of `make train`.

    python train.py --config=configs/seg_shapes_unet.py --workdir=runs/seg_shapes_unet

Sized to reach validation mIoU about 0.9 within 10 minutes of a 2-core CPU (docs/training.md).
Override any key from the command line, e.g. `--config.train.steps=500`.
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_classes = 5
    config.compilation_cache = "~/.cache/jaxseg/xla"
    # Convolutions (jaxseg.kernels): "xla", "onednn" (a system oneDNN 2.x, single-device CPU
    # programs) or "auto" (oneDNN where it can run, else XLA's). Same function, other speed.
    config.kernels = "auto"
    config.tensorboard = True
    # Multi-process runs (TPU pod slices, several GPU hosts): jax.distributed.initialize() is
    # called when this is true or JAX_COORDINATOR_ADDRESS is set (docs/scaling.md).
    config.distributed = False
    config.mesh = dict(
        axes=("data",),  # the batch is split over "data"
        shape=(-1,),  # -1: all remaining devices
        axis_types=("auto",),  # "auto" (XLA propagates shardings) or "explicit"
        fsdp_min_size=0,  # > 0: split arrays of at least this many elements over "data"
    )

    config.data = dict(
        name="shapes",  # "shapes" (generated) or "folder" (images/ + masks/)
        seed=0,  # shapes only: the generated data set
        train_samples=8000,
        val_samples=256,
        source_size=64,
        max_shapes=4,
        depth=False,  # shapes only: a depth channel as a fourth input channel
        root="",  # folder only
        images_dir="images",
        masks_dir="masks",
        extra_dirs=(),  # folder only: extra single-channel modalities
        train_split="",
        val_split="",
        class_names=(),
        image_size=(64, 64),
        mean=(0.5, 0.5, 0.5),  # one value per input channel (RGB + extra modalities)
        std=(0.25, 0.25, 0.25),
        ignore_index=255,
        scale_range=(1.0, 1.0),  # the generated data is plentiful: no rescaling or colour
        flip=True,  # jitter by default; (0.75, 1.25) and 0.2 suit real data
        jitter=0.0,
        balance=False,  # repeat-factor resampling of images with rare classes
        balance_threshold=0.01,
        skip_bad_samples=False,  # True: unreadable/invalid samples are skipped, counted, logged
        num_threads=2,
    )
    config.model = dict(
        name="unet",  # "unet" or "fcn"
        depth=3,
        base_width=16,
        norm="batch",
        dropout=0.0,
        upsampling="bilinear",
        dtype="float32",  # "bfloat16" for bf16 compute
    )
    config.loss = dict(
        weights=dict(ce=1.0, dice=1.0, focal=0.0, jaccard=0.0, tversky=0.0, lovasz=0.0, gradient=0.0, boundary=0.0),
        class_weights=(),  # explicit [C] weights, or derive them:
        class_weighting="",  # "", "inverse" or "median" (from training pixel frequencies)
        label_smoothing=0.0,
        focal_gamma=2.0,
        tversky_alpha=0.5,
        tversky_beta=0.5,
        dice_smooth=0.0,
        per_image=False,
        gradient_operator="forward",
    )
    config.optim = dict(
        name="adamw",  # "adam", "adamw" or "sgd"
        learning_rate=4e-3,
        schedule="warmup_cosine",  # "constant", "exponential", "cosine", "warmup_cosine", "piecewise"
        warmup_steps=200,
        end_fraction=0.01,
        decay_steps=1000,  # exponential
        decay_rate=0.5,  # exponential
        boundaries=(),  # piecewise: steps
        scales=(),  # piecewise: multiplicative factors at those steps
        momentum=0.9,  # sgd
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=1e-4,  # decoupled, kernels only
        l1=0.0,  # L1 penalty on kernels, added to the loss
        clip_norm=1.0,
        max_consecutive_nonfinite=10,
        encoder_lr_scale=1.0,  # learning-rate factor of the parameters under `encoder` (a pretrained backbone)
        freeze_encoder_steps=0,  # the encoder's updates are zero for this many steps
    )
    # Loss ablations: K variants in one program (configs/ablation_seg_losses.py; docs/ablations.md).
    config.ablation = dict(
        variants={},  # name -> {dotted config key: value}
        grid={},  # dotted config key -> list of values (product)
        strategy="auto",  # "vmap", "unroll" or "auto" (unroll on CPU, vmap elsewhere)
        same_init=True,  # False: member i initialises (and drops out) with seed + i
    )
    config.train = dict(
        steps=4000,
        batch_size=8,
        eval_batch_size=32,
        log_every=50,
        eval_every=500,
        checkpoint_every=500,
        keep_checkpoints=2,
        stop_after=0,  # > 0: stop (with a checkpoint) after this step; rerun to resume
        checkify=False,  # True: label checks compiled into the step (slower; docs/reliability.md)
        progress=True,
    )
    return config
