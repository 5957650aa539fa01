"""Forward+backward time of every loss under jit, side by side with optax and torch/smp/MONAI.

    python benchmarks/losses.py [--rounds 15] [--shape 8 256 256 21] [--out benchmarks/results/losses.json]

Each row times `value_and_grad` w.r.t. the logits (jitted for JAX; eager autograd for torch,
on NCHW inputs, the layout those libraries use) on the same data. Rounds are interleaved
across all implementations so that machine noise hits them alike; the table reports medians
and the speed-up of jaxseg over each counterpart (>1 means jaxseg is faster). For JAX it also
reports the bytes XLA's cost model says the compiled step moves. torch runs with as many
threads as JAX's CPU client uses (all cores). Reference libraries that are not installed are
skipped; `make conformance` installs them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jaxseg import losses  # noqa: E402

IGNORE = 255


# ----------------------------------------------------------------------------- implementations


def jaxseg_cases(num_classes):
    onehot = lambda y: jax.nn.one_hot(y, num_classes)
    return {
        "cross_entropy": lambda x, y, d: losses.cross_entropy(x, y),
        "cross_entropy (ignore, weights, smoothing)": lambda x, y, d: losses.cross_entropy(
            x, y, ignore_index=IGNORE, class_weights=jnp.linspace(0.5, 2, num_classes), label_smoothing=0.1
        ),
        "binary_cross_entropy": lambda x, y, d: losses.binary_cross_entropy(x, onehot(y)),
        "focal (softmax)": lambda x, y, d: losses.focal_loss(x, y, gamma=2.0),
        "focal (multilabel, smp)": lambda x, y, d: losses.focal_loss(x, onehot(y), mode="multilabel", gamma=2.0),
        "sigmoid_focal_loss": lambda x, y, d: losses.sigmoid_focal_loss(x, onehot(y), reduction="mean"),
        "dice": lambda x, y, d: losses.dice_loss(x, y),
        "jaccard": lambda x, y, d: losses.jaccard_loss(x, y),
        "tversky": lambda x, y, d: losses.tversky_loss(x, y, alpha=0.7, beta=0.3),
        "generalized_dice": lambda x, y, d: losses.generalized_dice_loss(x, y),
        "lovasz": lambda x, y, d: losses.lovasz_loss(x, y),
        "gradient (sobel)": lambda x, y, d: losses.gradient_loss(x, y, operator="sobel"),
        "boundary": lambda x, y, d: losses.boundary_loss(x, d),
        "ce + dice (segmentation_loss)": lambda x, y, d: losses.segmentation_loss(x, y, {"ce": 1.0, "dice": 1.0})[0],
    }


def optax_cases(num_classes):
    try:
        import optax
    except ImportError:
        return {}
    onehot = lambda y: jax.nn.one_hot(y, num_classes)
    return {
        "cross_entropy": lambda x, y, d: optax.softmax_cross_entropy_with_integer_labels(x, y).mean(),
        "binary_cross_entropy": lambda x, y, d: optax.sigmoid_binary_cross_entropy(x, onehot(y)).mean(),
        "sigmoid_focal_loss": lambda x, y, d: optax.sigmoid_focal_loss(x, onehot(y), alpha=0.25).mean(),
        "dice": lambda x, y, d: optax.losses.dice_loss(x, onehot(y), smooth=0.0).mean(),
        "generalized_dice": lambda x, y, d: optax.losses.multiclass_generalized_dice_loss(x, onehot(y)),
        "ce + dice (segmentation_loss)": lambda x, y, d: (
            optax.softmax_cross_entropy_with_integer_labels(x, y).mean()
            + optax.losses.dice_loss(x, onehot(y), smooth=0.0).mean()
        ),
    }


def torch_cases(num_classes):
    """(name -> (library, fn(x_nchw, y, d_nchw) -> loss)) for what is installed."""
    try:
        import torch
    except ImportError:
        return {}
    from tests.conformance import references as ref

    F = torch.nn.functional
    cases = {
        "cross_entropy": ("torch", lambda x, y, d: F.cross_entropy(x, y)),
        "cross_entropy (ignore, weights, smoothing)": (
            "torch",
            lambda x, y, d: F.cross_entropy(
                x, y, ignore_index=IGNORE, weight=torch.linspace(0.5, 2, num_classes), label_smoothing=0.1
            ),
        ),
        "binary_cross_entropy": (
            "torch",
            lambda x, y, d: F.binary_cross_entropy_with_logits(
                x, F.one_hot(y, num_classes).permute(0, 3, 1, 2).float()
            ),
        ),
        "gradient (sobel)": ("torch (same formula)", lambda x, y, d: torch_gradient_loss(x, y, num_classes)),
        "boundary": ("torch (same formula)", lambda x, y, d: (x.softmax(1) * d).mean()),
    }
    skip = __import__("pytest").skip.Exception
    try:
        smp = ref.smp_losses()
        onehot = lambda y: F.one_hot(y, num_classes).permute(0, 3, 1, 2).float().contiguous()
        cases.update(
            {
                "focal (multilabel, smp)": (
                    "smp",
                    lambda x, y, d: smp.FocalLoss("multilabel", gamma=2.0)(x, onehot(y)),
                ),
                "dice": ("smp", lambda x, y, d: smp.DiceLoss("multiclass")(x, y)),
                "jaccard": ("smp", lambda x, y, d: smp.JaccardLoss("multiclass")(x, y)),
                "tversky": ("smp", lambda x, y, d: smp.TverskyLoss("multiclass", alpha=0.7, beta=0.3)(x, y)),
                "lovasz": ("smp", lambda x, y, d: smp.LovaszLoss("multiclass")(x, y)),
                "ce + dice (segmentation_loss)": (
                    "torch + smp",
                    lambda x, y, d: F.cross_entropy(x, y) + smp.DiceLoss("multiclass")(x, y),
                ),
            }
        )
    except skip:
        pass
    try:
        monai = ref.monai_losses()
        focal = monai.FocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0)
        gdl = monai.GeneralizedDiceLoss(softmax=True, to_onehot_y=True)
        cases["focal (softmax)"] = ("MONAI", lambda x, y, d: focal(x, y[:, None]))
        cases["generalized_dice"] = ("MONAI", lambda x, y, d: gdl(x, y[:, None]))
    except skip:
        pass
    try:
        tv = ref.torchvision_ops("focal_loss")
        cases["sigmoid_focal_loss"] = (
            "torchvision",
            lambda x, y, d: tv.sigmoid_focal_loss(
                x, F.one_hot(y, num_classes).permute(0, 3, 1, 2).float(), reduction="mean"
            ),
        )
    except skip:
        pass
    return cases


def torch_gradient_loss(x, y, num_classes):
    """The Sobel gradient loss written directly in torch (no library offers one)."""
    import torch

    F = torch.nn.functional
    d = x.softmax(1) - F.one_hot(y, num_classes).permute(0, 3, 1, 2).float()
    smooth = torch.tensor([1.0, 2.0, 1.0]) / 4
    deriv = torch.tensor([-1.0, 0.0, 1.0]) / 2
    kx = (smooth[:, None] * deriv[None, :]).expand(num_classes, 1, 3, 3)
    ky = (deriv[:, None] * smooth[None, :]).expand(num_classes, 1, 3, 3)
    gx = F.conv2d(d, kx, groups=num_classes)
    gy = F.conv2d(d, ky, groups=num_classes)
    return (gx.pow(2).sum() + gy.pow(2).sum()) / (gx.numel() + gy.numel())


# ----------------------------------------------------------------------------- timing


def jax_timer(fn, x, y, d):
    step = jax.jit(jax.value_and_grad(fn))
    compiled = step.lower(x, y, d).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    jax.block_until_ready(step(x, y, d))

    def run():
        start = time.perf_counter()
        jax.block_until_ready(step(x, y, d))
        return time.perf_counter() - start

    return run, (cost or {}).get("bytes accessed")


def torch_timer(fn, x, y, d):
    import torch

    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, 1)))
    y = torch.from_numpy(np.asarray(y).astype(np.int64))
    d = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(d), -1, 1)))

    def run():
        leaf = x.detach().requires_grad_(True)
        start = time.perf_counter()
        fn(leaf, y, d).backward()
        return time.perf_counter() - start

    run()
    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=4, default=(8, 256, 256, 21), metavar=("B", "H", "W", "C"))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--only", nargs="*", help="substrings of the rows to run")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "losses.json"))
    args = parser.parse_args(argv)

    batch, height, width, num_classes = args.shape
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(args.shape).astype(np.float32))
    y = jnp.asarray(rng.integers(0, num_classes, (batch, height, width)).astype(np.int32))
    d = jnp.asarray(rng.standard_normal(args.shape).astype(np.float32))

    threads = os.cpu_count()
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass

    ours, theirs_jax, theirs_torch = jaxseg_cases(num_classes), optax_cases(num_classes), torch_cases(num_classes)
    names = [n for n in ours if not args.only or any(s in n for s in args.only)]
    runners, bytes_moved = {}, {}
    for name in names:
        runners[(name, "jaxseg")], bytes_moved[name] = jax_timer(ours[name], x, y, d)
        if name in theirs_jax:
            runners[(name, "optax")], _ = jax_timer(theirs_jax[name], x, y, d)
        if name in theirs_torch:
            library, fn = theirs_torch[name]
            runners[(name, library)] = torch_timer(fn, x, y, d)
    times = {key: [] for key in runners}
    for _ in range(args.rounds):
        for key, run in runners.items():
            times[key].append(run())
    medians = {key: statistics.median(ts) * 1e3 for key, ts in times.items()}

    rows = []
    for name in names:
        ours_ms = medians[(name, "jaxseg")]
        others = {lib: ms for (n, lib), ms in medians.items() if n == name and lib != "jaxseg"}
        rows.append(
            {
                "loss": name,
                "jaxseg_ms": round(ours_ms, 2),
                "xla_bytes_accessed_mb": None if bytes_moved[name] is None else round(bytes_moved[name] / 1e6, 1),
                "others_ms": {lib: round(ms, 2) for lib, ms in others.items()},
                "speedup": {lib: round(ms / ours_ms, 2) for lib, ms in others.items()},
            }
        )
    ce = next((r["jaxseg_ms"] for r in rows if r["loss"] == "cross_entropy"), None)
    combined = next((r["jaxseg_ms"] for r in rows if r["loss"].startswith("ce + dice")), None)

    header = f"{'loss':44s} {'jaxseg ms':>10s} {'XLA MB':>8s}  counterparts (ms, speed-up of jaxseg)"
    print(f"logits {list(args.shape)} float32, forward+backward, median of {args.rounds} interleaved rounds")
    print(header)
    print("-" * len(header))
    for r in rows:
        others = ", ".join(f"{lib} {ms:.1f} ({r['speedup'][lib]:.2f}x)" for lib, ms in r["others_ms"].items())
        mb = "" if r["xla_bytes_accessed_mb"] is None else f"{r['xla_bytes_accessed_mb']:.0f}"
        print(f"{r['loss']:44s} {r['jaxseg_ms']:10.1f} {mb:>8s}  {others}")
    if ce and combined:
        print(f"\nce + dice / ce alone: {combined / ce:.2f}x")

    result = {
        "shape": list(args.shape),
        "rounds": args.rounds,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
        },
        "versions": {m: _version(m) for m in ("optax", "torch", "segmentation_models_pytorch", "monai")},
        "rows": rows,
        "ce_plus_dice_over_ce": None if not (ce and combined) else round(combined / ce, 2),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def _version(module):
    try:
        from importlib.metadata import version

        return version({"segmentation_models_pytorch": "segmentation-models-pytorch"}.get(module, module))
    except Exception:
        return None


if __name__ == "__main__":
    main()
