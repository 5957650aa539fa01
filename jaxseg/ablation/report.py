"""The ablation's results, from the logs: `WORKDIR/ablation.md` and `WORKDIR/ablation.png`.

    python -m jaxseg.ablation.report --workdir=DIR

The training loop writes both at the end of a run; this command regenerates them at any time
(during a run too) from `metrics.jsonl` and `ablation_members.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from jaxseg.ablation.variants import Member, describe
from jaxseg.figures import read_metrics

MEMBERS_FILE = "ablation_members.json"


class Ranking(NamedTuple):
    """The metric the members are ranked by (the task's key metric) and its direction."""

    key: str = "miou"
    higher_is_better: bool = True


def save_members(workdir, members: list[Member], ranking: Ranking = Ranking()) -> None:
    path = Path(workdir) / MEMBERS_FILE
    listed = [{"name": m.name, "overrides": m.overrides} for m in members]
    path.write_text(json.dumps({"ranking": ranking._asdict(), "members": listed}, indent=2) + "\n")


def load_members(workdir) -> tuple[list[Member], Ranking]:
    path = Path(workdir) / MEMBERS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {workdir} is not an ablation workdir")
    saved = json.loads(path.read_text())
    if isinstance(saved, list):  # written before rankings were saved: segmentation's mIoU
        saved = {"ranking": Ranking()._asdict(), "members": saved}
    return [Member(m["name"], m["overrides"]) for m in saved["members"]], Ranking(**saved["ranking"])


def member_table(workdir) -> tuple[list[dict], Ranking]:
    """One row per member: overrides, best and final validation key metric (and per-class IoU
    where the task logs it), final training loss, steps."""
    records = read_metrics(workdir)
    members, ranking = load_members(workdir)
    choose = max if ranking.higher_is_better else min
    rows = []
    for member in members:
        val = [r for r in records if r.get("member") == member.name and r["split"] == "val"]
        train = [r for r in records if r.get("member") == member.name and r["split"] == "train"]
        best = choose(val, key=lambda r: r[ranking.key]) if val else None
        rows.append(
            {
                "member": member.name,
                "overrides": describe(member),
                "best": best[ranking.key] if best else None,
                "best_step": best["step"] if best else None,
                "final": val[-1][ranking.key] if val else None,
                "final_iou": val[-1].get("iou") if val else None,
                "final_train_loss": train[-1]["loss"] if train else None,
                "steps": max((r["step"] for r in train), default=0),
            }
        )
    return rows, ranking


def markdown(rows: list[dict], ranking: Ranking = Ranking()) -> str:
    number = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    classes = max((len(r["final_iou"] or []) for r in rows), default=0)
    name = "mIoU" if ranking.key == "miou" else ranking.key
    header = (
        ["member", "overrides", f"best val {name} (step)", f"final val {name}"]
        + [f"IoU {c}" for c in range(classes)]
        + ["steps"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    sign = -1.0 if ranking.higher_is_better else 1.0
    order = sorted(rows, key=lambda r: float("inf") if r["best"] is None else sign * r["best"])
    for r in order:
        best = f"{number(r['best'])} ({r['best_step']})" if r["best"] is not None else ""
        ious = [number(v) for v in (r["final_iou"] or [])] + [""] * (classes - len(r["final_iou"] or []))
        lines.append(
            "| " + " | ".join([r["member"], r["overrides"], best, number(r["final"]), *ious, str(r["steps"])]) + " |"
        )
    return "\n".join(lines) + "\n"


def plot(workdir, path) -> None:
    """Validation curves of the key metric of every member in one figure (and training loss beside it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(workdir)
    members, ranking = load_members(workdir)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for member in members:
        for ax, split, key in ((axes[0], "val", ranking.key), (axes[1], "train", "loss")):
            points = [
                (r["step"], r[key])
                for r in records
                if r.get("member") == member.name and r["split"] == split and r.get(key) is not None
            ]
            if points:
                ax.plot(*zip(*points), label=member.name, marker="o" if split == "val" else None, markersize=3)
    name = "mIoU" if ranking.key == "miou" else ranking.key
    for ax, title in zip(axes, (f"validation {name}", "training loss (each member's own objective)")):
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
    table = markdown(*member_table(workdir))
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
