"""FCOS detector on the synthetic shape boxes: the detection task's default config.

    python train.py --config=configs/det_shapes.py --workdir=runs/det_shapes

Classes are shape kinds (disk, rectangle, triangle, ring) with random colours and textures;
1 to 4 shapes per 64x64 image. Evaluation: COCO mAP with pycocotools. Sized for 10 minutes of
a 2-core CPU; measured results: docs/detection.md. For a COCO-format dataset set
`data.name="coco"` and the images folders and annotation files below.
"""

import ml_collections

from jaxseg.data.shapes import DETECTION_CLASSES


def get_config():
    config = ml_collections.ConfigDict()
    config.task = "detection"
    config.seed = 0
    config.num_classes = 4
    config.compilation_cache = "~/.cache/jaxseg/xla"
    # Convolutions (jaxseg.kernels): "xla", "onednn" (a system oneDNN 2.x, single-device CPU
    # programs) or "auto" (oneDNN where it can run, else XLA's). Same function, other speed.
    config.kernels = "auto"
    config.tensorboard = True
    config.distributed = False
    config.mesh = dict(axes=("data",), shape=(-1,), axis_types=("auto",), fsdp_min_size=0)

    config.data = dict(
        name="shapes",  # "shapes" (generated) or "coco" (images folder + instances JSON)
        seed=0,  # shapes only: the generated data set
        train_samples=20000,
        val_samples=500,
        source_size=64,
        max_shapes=4,
        train_images="",  # coco only
        train_annotations="",
        val_images="",
        val_annotations="",
        class_names=DETECTION_CLASSES,  # coco: () takes the categories' names
        max_boxes=8,  # box slots per image (static shapes); more boxes are dropped
        image_size=(64, 64),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        scale_range=(1.0, 1.0),  # box-aware rescale + crop; (0.75, 1.25) suits real data
        min_visible=0.5,  # a box cropped to less than this fraction of its area is dropped
        flip=True,
        jitter=0.0,
        skip_bad_samples=False,
        num_threads=2,
    )
    config.model = dict(
        name="fcos",
        widths=(16, 32, 64, 128),  # backbone stages, strides 2, 4, 8, 16
        output_stride=4,  # the one FPN level the head predicts on
        fpn=True,  # False: the last stage alone, upsampled (the FPN ablation)
        fpn_width=64,
        head_width=64,
        head_convs=2,
        norm="batch",
        head_norm="group",
        dtype="float32",
    )
    config.loss = dict(
        weights=dict(classes=1.0, box=1.0, centerness=1.0),
        focal_alpha=0.25,
        focal_gamma=2.0,
        center_radius=1.5,  # FCOS center sampling, in units of the output stride
    )
    config.detection = dict(
        score_threshold=0.05,
        iou_threshold=0.6,
        pre_nms_top_k=200,
        max_detections=50,
    )
    config.optim = dict(
        name="adamw",
        learning_rate=4e-3,
        schedule="warmup_cosine",
        warmup_steps=200,
        end_fraction=0.01,
        decay_steps=1000,
        decay_rate=0.5,
        boundaries=(),
        scales=(),
        momentum=0.9,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=1e-4,
        l1=0.0,
        clip_norm=1.0,
        max_consecutive_nonfinite=10,
    )
    config.ablation = dict(variants={}, grid={}, strategy="auto", same_init=True)
    config.train = dict(
        steps=3000,
        batch_size=32,
        eval_batch_size=50,
        log_every=50,
        eval_every=1000,
        checkpoint_every=1000,
        keep_checkpoints=2,
        stop_after=0,
        checkify=False,
        progress=True,
    )
    return config
