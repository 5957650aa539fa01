"""Peak memory and time of the LM head loss: naive logits + cross-entropy vs the streaming
`linear_cross_entropy`.

    python benchmarks/linear_cross_entropy.py [--tokens 8192] [--hidden 1024] [--vocab 32768 131072]
                                              [--repeats 3] [--out benchmarks/results/linear_cross_entropy.json]

Both compute the loss and the gradients with respect to the hidden states and the weight
(`jax.value_and_grad`, jitted, float32). Memory is XLA's account of the compiled program's
temporaries (the extra memory beyond inputs and the gradients every method returns), read
before running, so sizes whose naive version does not fit are still reported; such sizes are
not timed (`--max-naive-gib`). Time: median of `--repeats` runs after one warm-up.
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
from jaxseg.losses import linear_cross_entropy, token_cross_entropy  # noqa: E402


def naive(h, w, t):
    return token_cross_entropy(h @ w, t).loss


def streaming(h, w, t):
    return linear_cross_entropy(h, w, t).loss


def measure(fn, args, repeats: int, run: bool) -> dict:
    step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
    compiled = step.lower(*args).compile()
    analysis = compiled.memory_analysis()
    row = {"temp_mib": round(analysis.temp_size_in_bytes / 2**20, 1)}
    if run:
        jax.block_until_ready(compiled(*args))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times.append(time.perf_counter() - start)
        row["ms"] = round(statistics.median(times) * 1e3, 1)
        row["loss"] = float(compiled(*args)[0])
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-naive-gib", type=float, default=12.0, help="do not run a naive program needing more")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "linear_cross_entropy.json"))
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    rows = []
    print(
        f"loss + grads w.r.t. hidden and weight, {args.tokens} tokens x {args.hidden} hidden, float32, "
        f"{jax.default_backend()}"
    )
    print(
        f"{'vocab':>7s} {'naive MiB':>10s} {'stream MiB':>11s} {'memory':>8s} {'naive ms':>9s} {'stream ms':>10s} {'time':>6s}"
    )
    for vocab in args.vocab:
        h = jnp.asarray(rng.normal(size=(args.tokens, args.hidden)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(args.hidden, vocab)) / np.sqrt(args.hidden), jnp.float32)
        t = jnp.asarray(rng.integers(0, vocab, args.tokens), jnp.int32)
        logits_gib = args.tokens * vocab * 4 / 2**30
        ours = measure(streaming, (h, w, t), args.repeats, run=True)
        theirs = measure(naive, (h, w, t), args.repeats, run=3 * logits_gib <= args.max_naive_gib)
        row = {
            "vocab": vocab,
            "naive": theirs,
            "streaming": ours,
            "memory_fraction": round(ours["temp_mib"] / theirs["temp_mib"], 4),
        }
        if "ms" in theirs:
            row["time_ratio"] = round(ours["ms"] / theirs["ms"], 2)
            np.testing.assert_allclose(ours["loss"], theirs["loss"], rtol=1e-4)
        rows.append(row)
        print(
            f"{vocab:7d} {theirs['temp_mib']:10.1f} {ours['temp_mib']:11.1f} {row['memory_fraction']:7.1%} "
            f"{theirs.get('ms', float('nan')):9.1f} {ours['ms']:10.1f} {row.get('time_ratio', float('nan')):5.2f}x"
        )
    result = {
        "args": vars(args),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "backend": jax.default_backend(),
            "jax": jax.__version__,
        },
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
