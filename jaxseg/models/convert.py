"""smp's saved-model directories, both ways: `config.json` (smp's model class and constructor
arguments) beside `model.safetensors` (its state dict), what smp's `save_pretrained` writes and
`smp.from_pretrained` reads (as do the `smp-hub/...` models on the Hugging Face Hub).

    python -m jaxseg.models.convert --workdir=runs/unet_resnet34 --out=exported/unet_resnet34

writes a trained jaxseg model as such a directory, so torch tools (smp, ONNX, TensorRT) take it
unchanged: `smp.from_pretrained("exported/unet_resnet34")`. `from_pretrained` reads one back
(or an smp-hub id) into a jaxseg model.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import jax.numpy as jnp

from jaxseg.models import weights as weight_files
from jaxseg.models import zoo

SMP_CLASSES = {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "manet": "MAnet",
    "linknet": "Linknet",
    "fpn": "FPN",
    "pspnet": "PSPNet",
    "deeplabv3": "DeepLabV3",
    "deeplabv3plus": "DeepLabV3Plus",
    "pan": "PAN",
    "upernet": "UPerNet",
    "segformer": "Segformer",
    "dpt": "DPT",
}
ARCHS = {name: arch for arch, name in SMP_CLASSES.items()}
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
# smp's constructors drop arguments whose names start with "_": jaxseg's notes ride along there.
NORMALIZATION_KEY = "_jaxseg_input_normalization"


def smp_config(
    arch: str, *, encoder: str, num_classes: int, in_channels: int = 3, aux_params: dict | None = None, **options
) -> dict:
    """smp's `config.json` of the model `zoo.create(arch, encoder=..., ...)` builds: the class
    and its constructor's arguments (`encoder_weights` None: the state dict holds them)."""
    arch = arch.lower()
    if arch not in SMP_CLASSES:
        raise ValueError(f"unknown architecture {arch!r}; smp has {sorted(SMP_CLASSES)}")
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    return dict(
        _model_class=SMP_CLASSES[arch],
        encoder_name=encoder,
        encoder_weights=None,
        in_channels=in_channels,
        classes=num_classes,
        aux_params=aux_params,
        **options,
    )


def save_pretrained(model, directory, *, normalization: dict | None = None, **config) -> Path:
    """Write `model` (a `zoo.create` model) as smp's saved-model directory: `config.json` from
    `config` (`smp_config`'s arguments) and `model.safetensors`. `normalization`: the input
    normalisation it was trained with (`{"mean": [...], "std": [...]}` of `x / 255`), recorded
    for the reader (smp ignores it)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    content = smp_config(**config)
    if normalization is not None:
        content[NORMALIZATION_KEY] = normalization
    weight_files.write_state_dict(weight_files.state_dict(model), directory / WEIGHTS_FILE)
    (directory / CONFIG_FILE).write_text(json.dumps(content, indent=2) + "\n")
    return directory


def create_arguments(config: dict) -> dict:
    """`zoo.create`'s keyword arguments from smp's `config.json` (without the weights)."""
    config = {k: v for k, v in config.items() if not k.startswith("_") or k == "_model_class"}
    name = config.pop("_model_class", None)
    if name not in ARCHS:
        raise ValueError(f"config.json names the model class {name!r}; jaxseg builds {sorted(ARCHS)}")
    activation = config.pop("activation", None)
    if activation not in (None, "identity"):
        warnings.warn(
            f"the saved model applies activation {activation!r}; jaxseg models return logits (apply it to them)",
            stacklevel=3,
        )
    config.pop("encoder_weights", None)  # the full state dict follows
    arguments = dict(
        arch=ARCHS[name],
        encoder=config.pop("encoder_name", "resnet34"),  # smp's defaults
        num_classes=config.pop("classes", 1),
        in_channels=config.pop("in_channels", 3),
        aux_params=config.pop("aux_params", None),
    )
    return dict(arguments, **{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


def _files(source) -> tuple[Path, Path]:
    path = Path(source)
    if path.is_dir():
        return path / CONFIG_FILE, path / WEIGHTS_FILE
    if path.exists() or str(source).count("/") != 1:
        raise FileNotFoundError(f"{source}: not a saved-model directory (config.json + model.safetensors)")
    return weight_files.hub_file(str(source), CONFIG_FILE), weight_files.hub_file(str(source), WEIGHTS_FILE)


def from_pretrained(source, *, dtype=jnp.float32, rngs=None, **create_options):
    """The jaxseg model of smp's saved-model directory or Hub id (`smp-hub/...`): the
    architecture and options of its `config.json`, the weights of its `model.safetensors`."""
    config_file, weights_file = _files(source)
    arguments = create_arguments(json.loads(Path(config_file).read_text()))
    return zoo.create(**arguments, weights=weights_file, dtype=dtype, rngs=rngs, **create_options)


def export_workdir(workdir, out, *, step: str | int = "best") -> Path:
    """A trained segmentation workdir's checkpoint (`step`: "best", "latest" or a number) as
    smp's saved-model directory `out`."""
    from flax import nnx

    from jaxseg.train.inference import restore

    restored = restore(workdir, step)
    config = restored.config
    if "arch" not in config.model:
        raise ValueError(
            f"{workdir} trained config.model.name={config.model.get('name')!r}, one of jaxseg's own models; "
            "only smp architectures (config.model.arch) have an smp form"
        )
    model = nnx.merge(restored.graphdef, restored.state.params, restored.state.model_state)
    skipped = ("arch", "encoder", "weights", "encoder_weights", "dtype", "aux_params")
    options = {k: None if v == "" else v for k, v in dict(config.model).items() if k not in skipped}
    return save_pretrained(
        model,
        out,
        arch=config.model.arch,
        encoder=config.model.encoder,
        num_classes=config.num_classes,
        in_channels=len(config.data.mean),
        normalization={"mean": list(config.data.mean), "std": list(config.data.std)},
        **options,
    )


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m jaxseg.models.convert",
        description="Write a trained jaxseg smp-architecture model as smp's saved-model directory.",
    )
    parser.add_argument("--workdir", required=True, help="the training run's workdir")
    parser.add_argument("--out", required=True, help="the directory to write (config.json, model.safetensors)")
    parser.add_argument("--step", default="best", help='"best" (default), "latest" or a step number')
    args = parser.parse_args(argv)
    out = export_workdir(args.workdir, args.out, step=args.step)
    print(f"wrote {out / CONFIG_FILE} and {out / WEIGHTS_FILE}")


if __name__ == "__main__":
    main()
