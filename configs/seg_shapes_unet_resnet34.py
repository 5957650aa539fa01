"""smp's Unet on a ResNet-34 encoder (`jaxseg.models.create`) on the shapes data.

    python train.py --config=configs/seg_shapes_unet_resnet34.py --workdir=runs/unet_resnet34
    # from ImageNet weights when online (fetched once into the Hugging Face cache), with the
    # encoder at a tenth of the learning rate:
    python train.py --config=configs/seg_shapes_unet_resnet34.py --workdir=runs/unet_resnet34_imagenet \\
        --config.model.encoder_weights=smp-hub/resnet34.imagenet --config.optim.encoder_lr_scale=0.1

Sets the model (smp's names and defaults; `weights` / `encoder_weights` take a safetensors or
torch file or a hub id) and keeps everything else of configs/seg_shapes_unet.py. ImageNet
encoders expect ImageNet normalisation: `data.mean` / `data.std` are set to it.
"""

from configs import seg_shapes_unet


def get_config():
    config = seg_shapes_unet.get_config()
    config.model = dict(
        arch="unet",
        encoder="resnet34",
        encoder_depth=5,
        decoder_channels=(256, 128, 64, 32, 16),
        decoder_use_norm="batchnorm",
        decoder_attention_type="",  # or "scse"
        decoder_interpolation="nearest",
        encoder_weights="",  # a file or hub id; "" trains the encoder from scratch
        weights="",  # a full smp Unet state dict of the same shape
        dtype="float32",
    )
    config.data.mean = (0.485, 0.456, 0.406)
    config.data.std = (0.229, 0.224, 0.225)
    return config
