"""The ablation's results, from the logs: `WORKDIR/ablation.md` and `WORKDIR/ablation.png`.

    python -m jaxseg.ablation.report --workdir=DIR

The training loop writes both at the end of a run; this command regenerates them at any time
(during a run too) from `metrics.jsonl` and `ablation_members.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

from jaxseg.ablation.variants import Member, describe
from jaxseg.train.logging import read_metrics

MEMBERS_FILE = "ablation_members.json"


def save_members(workdir, members: list[Member]) -> None:
    path = Path(workdir) / MEMBERS_FILE
    path.write_text(json.dumps([{"name": m.name, "overrides": m.overrides} for m in members], indent=2) + "\n")


def load_members(workdir) -> list[Member]:
    path = Path(workdir) / MEMBERS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {workdir} is not an ablation workdir")
    return [Member(m["name"], m["overrides"]) for m in json.loads(path.read_text())]


def member_table(workdir) -> list[dict]:
    """One row per member: overrides, best and final validation mIoU, final per-class IoU, steps."""
    records = read_metrics(workdir)
    rows = []
    for member in load_members(workdir):
        val = [r for r in records if r.get("member") == member.name and r["split"] == "val"]
        train = [r for r in records if r.get("member") == member.name and r["split"] == "train"]
        best = max(val, key=lambda r: r["miou"]) if val else None
        rows.append({
            "member": member.name, "overrides": describe(member),
            "best_miou": best["miou"] if best else None, "best_step": best["step"] if best else None,
            "final_miou": val[-1]["miou"] if val else None, "final_iou": val[-1]["iou"] if val else None,
            "final_train_loss": train[-1]["loss"] if train else None,
            "steps": max((r["step"] for r in train), default=0),
        })
    return rows


def markdown(rows: list[dict]) -> str:
    number = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    classes = max((len(r["final_iou"] or []) for r in rows), default=0)
    header = ["member", "overrides", "best val mIoU (step)", "final val mIoU"] + [f"IoU {c}" for c in range(classes)] + ["steps"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = sorted(rows, key=lambda r: -(r["best_miou"] or -1))
    for r in order:
        best = f"{number(r['best_miou'])} ({r['best_step']})" if r["best_miou"] is not None else ""
        ious = [number(v) for v in (r["final_iou"] or [])] + [""] * (classes - len(r["final_iou"] or []))
        lines.append("| " + " | ".join([r["member"], r["overrides"], best, number(r["final_miou"]), *ious, str(r["steps"])]) + " |")
    return "\n".join(lines) + "\n"


def plot(workdir, path) -> None:
    """Validation mIoU curves of every member in one figure (and training loss beside it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(workdir)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for member in load_members(workdir):
        for ax, split, key in ((axes[0], "val", "miou"), (axes[1], "train", "loss")):
            points = [(r["step"], r[key]) for r in records
                      if r.get("member") == member.name and r["split"] == split and r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), label=member.name, marker="o" if split == "val" else None, markersize=3)
    for ax, title in zip(axes, ("validation mIoU", "training loss (each member's own objective)")):
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    if axes[0].lines:
        axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def write_report(workdir) -> str:
    """Write `ablation.md` and `ablation.png`; returns the markdown table."""
    workdir = Path(workdir)
    table = markdown(member_table(workdir))
    (workdir / "ablation.md").write_text(f"# Ablation in {workdir.name}\n\n" + table)
    plot(workdir, workdir / "ablation.png")
    return table


def main(argv):
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    print(write_report(flags.FLAGS.workdir))


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("workdir", None, "An ablation's training directory.", required=True)
    app.run(main)
