"""Loss ablations: members from config, their hyperparameters, and K members trained in one
program against the same K configs trained one by one.

Tolerances: `unroll` traces each member's own step, so its members match the separate runs to
float32 rounding (the only differences are exact: a 0-weighted term added, a learning-rate
scale of 1). `vmap` turns each member's convolutions into one grouped convolution whose sums
run in another order; Adam turns such rounding in near-zero gradients into parameter
differences of a fraction of the learning rate, so parameters agree to 2e-3 (lr up to 8e-3).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxseg.ablation import strategies, variants
from jaxseg.tasks import segmentation
from jaxseg.train.loop import train_and_evaluate
from tests.train.tiny import flat, saved_state, tiny_config

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = {
    "ce": {"loss": {"weights": {"ce": 1.0}}},
    "dice-fast": {"loss": {"weights": {"dice": 1.0}}, "optim": {"learning_rate": 8e-3}},
    "ce-weighted": {"loss": {"weights": {"ce": 1.0}, "class_weighting": "median"}, "optim": {"weight_decay": 0.1}},
}
STEPS = 4


def ablation_config(cache, strategy="unroll", **train):
    config = tiny_config(cache)
    config.ablation.variants = VARIANTS
    config.ablation.strategy = strategy
    config.train.update(steps=STEPS, eval_every=STEPS, checkpoint_every=2, **train)
    return config


# ---------------------------------------------------------------------------- members from config


def test_variants_and_grid_expand_to_named_members():
    config = tiny_config()
    config.ablation.variants = {"ce": {"loss": {"weights": {"ce": 1.0}}}, "dice": {"loss": {"weights": {"dice": 1.0}}}}
    config.ablation.grid = {"loss": {"label_smoothing": [0.0, 0.1]}, "optim": {"learning_rate": [1e-3]}}
    members = variants.members(config)
    assert [m.name for m in members] == [
        "ce,label_smoothing=0,learning_rate=0.001",
        "ce,label_smoothing=0.1,learning_rate=0.001",
        "dice,label_smoothing=0,learning_rate=0.001",
        "dice,label_smoothing=0.1,learning_rate=0.001",
    ]
    assert members[1].overrides == {
        "loss.weights": {"ce": 1.0},
        "loss.label_smoothing": 0.1,
        "optim.learning_rate": 1e-3,
    }
    member_cfg = variants.member_config(config, members[3])
    assert member_cfg.loss.weights.ce == 0.0 and member_cfg.loss.weights.dice == 1.0  # replaced whole
    assert member_cfg.loss.label_smoothing == 0.1 and config.loss.label_smoothing == 0.0  # a copy
    assert variants.members(tiny_config()) == []  # no ablation


@pytest.mark.parametrize(
    "variant, message",
    [
        ({"data": {"image_size": (16, 16)}}, "cannot vary 'data.image_size'"),
        ({"optim": {"b1": 0.5}}, "cannot vary 'optim.b1'"),
        ({"loss": {"weights": {"cee": 1.0}}}, "unknown loss terms"),
    ],
)
def test_a_bad_variant_is_an_error_naming_the_key(variant, message):
    config = tiny_config()
    config.ablation.variants = {"bad": variant}
    with pytest.raises(ValueError, match=message):
        [variants.member_config(config, m) for m in variants.members(config)]


def test_a_grid_needs_value_lists():
    config = tiny_config()
    config.ablation.grid = {"loss": {"label_smoothing": 0.1}}
    with pytest.raises(ValueError, match="loss.label_smoothing needs a non-empty list"):
        variants.members(config)


def test_member_hyperparameters_share_one_structure(tmp_path):
    config = tiny_config()
    config.ablation.variants = VARIANTS
    config.ablation.same_init = False
    members = variants.members(config)
    assert [m.name for m in members] == ["ce", "ce-weighted", "dice-fast"]  # ml_collections sorts keys
    setup = variants.member_setup(config, members, segmentation.Task(config), tmp_path)
    loss = setup.hp["loss"]
    assert sorted(loss.weights) == ["ce", "dice"]
    np.testing.assert_array_equal(loss.weights["ce"], [1, 1, 0])
    np.testing.assert_array_equal(setup.hp["lr_scale"], [1.0, 1.0, 2.0])
    assert setup.seeds == [0, 1, 2] and setup.weight_decays == [1e-4, 0.1, 1e-4]
    assert setup.active_terms == [("ce",), ("ce",), ("dice",)]


def test_auto_strategy_per_backend():
    assert strategies.resolve("auto", "cpu") == "unroll"
    assert strategies.resolve("auto", "gpu") == strategies.resolve("auto", "tpu") == "vmap"
    with pytest.raises(ValueError, match="config.ablation.strategy"):
        strategies.resolve("pmap")


# ---------------------------------------------------------------------------- training


class Runs:
    """Training runs made on first use and shared by the tests of this module: the three
    members one by one, and together with each strategy."""

    def __init__(self, root: Path, cache: str):
        self.root, self.cache, self.results = root, cache, {}

    def single(self, name: str) -> Path:
        workdir = self.root / f"single_{name}"
        if not workdir.exists():
            config = ablation_config(self.cache)
            member = next(m for m in variants.members(config) if m.name == name)
            single = variants.member_config(config, member)
            single.ablation.variants = {}
            train_and_evaluate(single, workdir)
        return workdir

    def together(self, strategy: str) -> Path:
        workdir = self.root / strategy
        if strategy not in self.results:
            self.results[strategy] = train_and_evaluate(ablation_config(self.cache, strategy), workdir)
        return workdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runs(tmp_path_factory.mktemp("ablation"), str(tmp_path_factory.getbasetemp() / "xla_cache_ablation"))


@pytest.mark.slow  # 100 s: the default run keeps the cheaper ablation tests
@pytest.mark.parametrize("strategy, atol", [("unroll", 1e-6), ("vmap", 2e-3)])
def test_members_in_one_program_equal_separate_runs(runs, strategy, atol):
    stacked = saved_state(runs.together(strategy), STEPS)
    np.testing.assert_array_equal(stacked["step"], [STEPS] * 3)
    for index, name in enumerate(sorted(VARIANTS)):
        single = saved_state(runs.single(name), STEPS)
        member = jax.tree.map(lambda x: x[index], stacked["params"])
        for key, value in flat(single["params"]).items():
            np.testing.assert_allclose(flat(member)[key], value, atol=atol, rtol=0, err_msg=f"{name} {key}")
        expected = json.loads((runs.single(name) / "metrics.jsonl").read_text().splitlines()[-1])
        got = runs.results[strategy]["members"][name]
        np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-4 if strategy == "vmap" else 1e-6)


@pytest.mark.slow
def test_ablation_report_and_logs(runs):
    workdir = runs.together("unroll")
    results = runs.results
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert {r["member"] for r in records} == set(VARIANTS)
    assert results["unroll"]["best_member"] in VARIANTS
    assert results["unroll"]["miou"] == max(m["miou"] for m in results["unroll"]["members"].values())
    (workdir / "ablation.md").unlink()
    (workdir / "ablation.png").unlink()
    subprocess.run(
        [sys.executable, "-m", "jaxseg.ablation.report", f"--workdir={workdir}"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    table = (workdir / "ablation.md").read_text()
    assert all(f"| {name} |" in table for name in VARIANTS) and (workdir / "ablation.png").stat().st_size > 0


@pytest.mark.slow
def test_an_interrupted_ablation_resumes_exactly(runs, tmp_path):
    straight = runs.together("unroll")
    train_and_evaluate(ablation_config(runs.cache, stop_after=2), tmp_path)
    train_and_evaluate(ablation_config(runs.cache), tmp_path)
    for key, value in flat(saved_state(straight, STEPS)).items():
        np.testing.assert_array_equal(flat(saved_state(tmp_path, STEPS))[key], value, err_msg=key)
