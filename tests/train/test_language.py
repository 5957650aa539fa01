"""Language models end to end: tiny LSTM and Transformer LMs learn a small generated corpus,
resume exactly, evaluate, generate text, and face the n-gram baseline on the same tokens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from configs import lm_lstm, lm_transformer
from jaxseg.baseline import ngram_table
from jaxseg.evaluate import evaluate_workdir
from jaxseg.figures import read_metrics
from jaxseg.generate import generate_text
from jaxseg.tasks import language
from jaxseg.train import parallel
from jaxseg.train.loop import train_and_evaluate
from jaxseg.train.program import compile_program
from tests.train.tiny import flat, saved_state

ROOT = Path(__file__).resolve().parents[2]


def write_corpus(path: Path, lines: int = 1500) -> Path:
    """Sentences of a small grammar: predictable enough to learn in a few dozen steps."""
    rng = np.random.default_rng(0)
    nouns, verbs, adjectives = (
        ["king", "city", "river", "shepherd", "stone"],
        ["saw", "built", "blessed"],
        ["great", "old"],
    )
    sentences = [
        f"the {rng.choice(adjectives)} {rng.choice(nouns)} {rng.choice(verbs)} the {rng.choice(nouns)}.\n"
        for _ in range(lines)
    ]
    path.write_text("".join(sentences), encoding="utf-8")
    return path


def tiny_lm_config(model: str, corpus: Path, compilation_cache: str = ""):
    config = (lm_lstm if model == "lstm" else lm_transformer).get_config()
    config.compilation_cache = compilation_cache
    config.tensorboard = False
    config.data.update(
        corpus=str(corpus), vocab_size=300, seq_len=16, num_threads=1, eval_seq_len=32 if model == "lstm" else 0
    )  # the LSTM is scored on longer windows
    if model == "lstm":
        config.model.update(embed_dim=32, hidden_dim=32, num_layers=1)
    else:
        config.model.update(d_model=32, num_layers=2, num_heads=2)
    config.optim.update(learning_rate=3e-2 if model == "lstm" else 1e-2, warmup_steps=2)
    config.train.update(
        steps=40, batch_size=8, eval_batch_size=8, log_every=10, eval_every=20, checkpoint_every=20, progress=False
    )
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Both models trained once: {name: (config, workdir, final metrics)}."""
    root = tmp_path_factory.mktemp("lm")
    corpus = write_corpus(root / "corpus.txt")
    runs = {}
    for model in ("lstm", "transformer"):
        config = tiny_lm_config(model, corpus)
        runs[model] = (config, root / model, train_and_evaluate(config, root / model))
    return runs


@pytest.mark.parametrize("model", ["lstm", "transformer"])
def test_language_models_learn(trained, model):
    config, workdir, metrics = trained[model]
    records = read_metrics(workdir)
    train = [r for r in records if r["split"] == "train"]
    assert len(train) == 4 and train[-1]["loss"] < 0.6 * train[0]["loss"]
    unigram = ngram_table(config, workdir, orders=(1,))[1]["perplexity"]  # Kneser-Ney unigram, same tokens
    assert metrics["perplexity"] < 0.5 * unigram  # the model uses context
    np.testing.assert_allclose(metrics["bits_per_token"], np.log2(metrics["perplexity"]), rtol=1e-6)
    assert 0.2 < metrics["accuracy"] <= 1.0
    assert train[-1]["tokens_per_second"] > 0
    assert (workdir / "tokenizer.json").exists() and (workdir / "figures" / "curves.png").exists()


@pytest.mark.parametrize("model", [pytest.param("lstm", marks=pytest.mark.slow), "transformer"])
def test_evaluate_and_generate_from_the_workdir(trained, model):
    _, workdir, metrics = trained[model]
    evaluated = evaluate_workdir(workdir, "latest")
    np.testing.assert_allclose(evaluated["perplexity"], metrics["perplexity"], rtol=1e-5)
    # 40 tokens is beyond the Transformer's context of 16: its cache is rebuilt on the way.
    greedy = generate_text(workdir, "the great", tokens=40, temperature=0.0)
    assert greedy.startswith("the great") and len(greedy) > len("the great") + 20
    assert generate_text(workdir, "the great", tokens=40, temperature=0.0) == greedy
    sampled = {generate_text(workdir, "the", tokens=12, temperature=1.0, top_k=20, top_p=0.9, seed=s) for s in range(3)}
    assert len(sampled) > 1


def test_ngram_baseline_scores_the_same_tokens(trained):
    config, workdir, metrics = trained["lstm"]
    rows = {(r["order"], r["smoothing"]): r for r in ngram_table(config, workdir, orders=(1, 3))}
    val_batches = language.make_data(config, workdir).val
    assert val_batches[0]["tokens"].shape[1] == language.eval_seq_len(config.data) + 1 == 33
    scored = sum(int(b["valid"].sum()) for b in (val_batches[i] for i in range(len(val_batches)))) * 32
    assert all(r["tokens"] == scored for r in rows.values())
    assert rows[3, "kneser_ney"]["perplexity"] < rows[1, "kneser_ney"]["perplexity"]
    assert (workdir / "ngram.json").exists()


def test_streaming_and_materialised_heads_agree(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", lines=300)
    results = []
    for head in ("streaming", "logits"):
        config = tiny_lm_config("transformer", corpus)
        config.loss.update(head=head, chunk_size=(32, 64), label_smoothing=0.1, z_loss=1e-3)
        mesh = parallel.make_mesh(config.get("mesh"))
        program = compile_program(config, mesh, language.Task(config))
        data = language.make_data(config, tmp_path / head)
        state = program.init()
        state, metrics = program.train(
            state,
            parallel.global_batch(next(data.train), mesh=mesh),
            program.place_hp(language.hyperparameters(config)),
        )
        results.append((jax.device_get(metrics), flat(jax.device_get(state.params))))
    (streaming, streamed_params), (materialised, materialised_params) = results
    for key in ("loss", "loss_nll", "loss_z", "grad_norm", "correct", "tokens"):
        np.testing.assert_allclose(streaming[key], materialised[key], rtol=2e-5, err_msg=key)
    for key, value in streamed_params.items():
        np.testing.assert_allclose(value, materialised_params[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_eval_seq_len_defaults_to_seq_len_and_sizes_the_transformer(tmp_path):
    config = tiny_lm_config("transformer", tmp_path / "unused.txt")
    assert language.eval_seq_len(config.data) == 16
    del config.data["eval_seq_len"]  # configs saved before the key existed
    assert language.eval_seq_len(config.data) == 16
    config.data.eval_seq_len = 64  # RoPE positions beyond the training windows need a longer context
    model = language.model_factory(config)(rngs=nnx.Rngs(0))
    assert model.max_len == 64
    config.data.eval_seq_len = -1
    with pytest.raises(ValueError, match="config.data.eval_seq_len"):
        language.eval_seq_len(config.data)


@pytest.mark.slow
def test_language_run_resumes_exactly(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", lines=300)
    config = tiny_lm_config("lstm", corpus)
    config.train.update(steps=8, log_every=4, eval_every=4, checkpoint_every=4)
    train_and_evaluate(config, tmp_path / "straight")
    config.train.stop_after = 4
    train_and_evaluate(config, tmp_path / "resumed")
    config.train.stop_after = 0
    train_and_evaluate(config, tmp_path / "resumed")
    straight, resumed = flat(saved_state(tmp_path / "straight", 8)), flat(saved_state(tmp_path / "resumed", 8))
    for key, value in straight.items():
        np.testing.assert_array_equal(value, resumed[key], err_msg=key)


@pytest.mark.slow
def test_generate_command_line(trained):
    _, workdir, _ = trained["lstm"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxseg.generate",
            f"--workdir={workdir}",
            "--prompt=the old",
            "--tokens=10",
            "--temperature=0.8",
            "--top_p=0.9",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("the old")


def test_bad_language_configs_name_the_key(tmp_path):
    config = tiny_lm_config("lstm", write_corpus(tmp_path / "corpus.txt", lines=100))
    config.loss.head = "fused"
    with pytest.raises(ValueError, match="config.loss.head"):
        train_and_evaluate(config, tmp_path / "a")
    config = tiny_lm_config("lstm", tmp_path / "nowhere.txt")
    with pytest.raises(FileNotFoundError, match="config.data.corpus"):
        train_and_evaluate(config, tmp_path / "b")


def test_a_language_model_ablation_trains_its_members_as_separate_runs_would(tmp_path):
    # The member program is built through the Task interface: an LM ablation of the label
    # smoothing trains both members in one program, and the unsmoothed member matches a run
    # of its own config.
    corpus = write_corpus(tmp_path / "corpus.txt", lines=300)
    config = tiny_lm_config("lstm", corpus)
    config.train.update(steps=10, log_every=5, eval_every=10, checkpoint_every=10)
    single = train_and_evaluate(config, tmp_path / "single")
    config.ablation = dict(
        variants={"plain": {}, "smoothed": {"loss": {"label_smoothing": 0.2}}},
        grid={},
        strategy="unroll",
        same_init=True,
    )
    result = train_and_evaluate(config, tmp_path / "ablation")
    members = result["members"]
    assert sorted(members) == ["plain", "smoothed"]
    np.testing.assert_allclose(members["plain"]["perplexity"], single["perplexity"], rtol=1e-4)
    assert members["smoothed"]["loss"] != pytest.approx(members["plain"]["loss"], rel=1e-3)
    assert (tmp_path / "ablation" / "ablation.md").exists()
