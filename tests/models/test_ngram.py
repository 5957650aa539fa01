"""The n-gram baseline: normalised, add-k by hand, Kneser-Ney against a dict reference."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from jaxseg.models.ngram import DISCOUNT_RANGE, NGramModel

V = 12


def random_corpus(size=400, vocab=V, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=size)


def markov_corpus(size, vocab=20, seed=0, process_seed=123):
    """A second-order Markov chain whose next-token distributions are peaked (Dirichlet 0.1)."""
    process = np.random.default_rng(process_seed)
    transitions = process.dirichlet(np.full(vocab, 0.1), size=(vocab, vocab))  # [V, V, V]
    cumulative = np.cumsum(transitions, axis=-1)
    rng = np.random.default_rng(seed)
    tokens = [0, 1]
    for u in rng.random(size - 2):
        row = cumulative[tokens[-2], tokens[-1]]
        tokens.append(min(int(np.searchsorted(row, u)), vocab - 1))
    return np.array(tokens)


def next_token_distribution(model, context):
    """P(w | context) for every w, read off the last position of `context + [w]`."""
    return np.array([np.exp(model.log_probs(np.array(list(context) + [w]))[-1]) for w in range(model.vocab_size)])


# ---------------------------------------------------------------- normalisation

CONTEXTS = [(), (3,), (3, 5), (1, 2, 3), (4, 4, 4, 4, 4), (11, 0, 7)]


@pytest.mark.parametrize("smoothing", ["add_k", "kneser_ney"])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_every_conditional_distribution_sums_to_one(smoothing, order):
    train = random_corpus(size=300)
    train = train[train != V - 1]  # token V-1 never seen: its mass must still be counted
    model = NGramModel.fit(train, vocab_size=V, order=order, smoothing=smoothing, k=0.5)
    contexts = CONTEXTS + [tuple(train[10:13]), tuple(train[50:54])]  # some seen in training
    for context in contexts:
        probs = next_token_distribution(model, context)
        assert np.all(probs > 0)
        assert abs(probs.sum() - 1.0) < 1e-9, (context, probs.sum())


def test_each_position_depends_on_at_most_order_minus_one_previous_tokens():
    train = random_corpus()
    model = NGramModel.fit(train, vocab_size=V, order=3)
    query = random_corpus(size=40, seed=1)
    whole = model.log_probs(query)
    windows = [model.log_probs(query[max(0, i - 2) : i + 1])[-1] for i in range(len(query))]
    np.testing.assert_allclose(whole, windows, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- add-k


def test_add_k_matches_hand_computation():
    # Bigrams of [0 1 0 1 2]: (0 1) x2, (1 0), (1 2); unigrams: 0 x2, 1 x2, 2 x1.
    model = NGramModel.fit(np.array([0, 1, 0, 1, 2]), vocab_size=3, order=2, smoothing="add_k", k=1.0)
    expected = [
        (2 + 1) / (5 + 3),  # P(0): unigram, empty history
        (2 + 1) / (2 + 3),  # P(1 | 0): c(0 1) = 2, c(0 .) = 2
        (1 + 1) / (2 + 3),  # P(2 | 1): c(1 2) = 1, c(1 .) = 2
        (0 + 1) / (0 + 3),  # P(0 | 2): history 2 never followed by anything
    ]
    np.testing.assert_allclose(model.log_probs(np.array([0, 1, 2, 0])), np.log(expected), rtol=1e-12)


def test_add_k_uses_k():
    model = NGramModel.fit(np.array([0, 1, 0, 1, 2]), vocab_size=3, order=2, smoothing="add_k", k=0.25)
    assert model.log_probs(np.array([0, 1]))[-1] == pytest.approx(math.log((2 + 0.25) / (2 + 0.75)), rel=1e-12)


# ---------------------------------------------------------------- Kneser-Ney reference


class ReferenceKneserNey:
    """Interpolated Kneser-Ney written from the textbook formula with dicts and recursion."""

    def __init__(self, train, vocab, order, discount=None):
        train = [int(t) for t in train]
        self.vocab, self.order = vocab, order
        raw = {
            n: Counter(tuple(train[i - n + 1 : i + 1]) for i in range(n - 1, len(train))) for n in range(1, order + 1)
        }
        # Continuation count of an n-gram: how many distinct tokens precede it.
        self.counts = {n: Counter(gram[1:] for gram in raw[n + 1]) for n in range(1, order)}
        self.counts[order] = raw[order]
        self.discounts = {
            n: discount if discount is not None else self.estimate(self.counts[n]) for n in range(1, order + 1)
        }

    @staticmethod
    def estimate(counts):
        n1 = sum(1 for c in counts.values() if c == 1)
        n2 = sum(1 for c in counts.values() if c == 2)
        low, high = DISCOUNT_RANGE
        return min(max(n1 / (n1 + 2 * n2), low), high) if n1 + n2 else low

    def prob(self, word, history):
        n = len(history) + 1
        lower = 1 / self.vocab if n == 1 else self.prob(word, history[1:])
        following = {g: c for g, c in self.counts[n].items() if g[:-1] == history}
        total = sum(following.values())
        if total == 0:
            return lower
        d = self.discounts[n]
        return max(following.get(history + (word,), 0) - d, 0) / total + d * len(following) / total * lower

    def log_prob_at(self, tokens, i):
        history = tuple(int(t) for t in tokens[max(0, i - self.order + 1) : i])
        return math.log(self.prob(int(tokens[i]), history))


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("discount", [None, 0.3, 1.0])
def test_kneser_ney_matches_reference(order, discount):
    train = markov_corpus(600, vocab=V, seed=0)
    model = NGramModel.fit(train, vocab_size=V, order=order, discount=discount)
    reference = ReferenceKneserNey(train, V, order, discount)
    assert model.discounts == pytest.approx([reference.discounts[n] for n in range(1, order + 1)])
    # Held-out stream from the same process and a uniform one (unseen contexts), plus training.
    for query in (markov_corpus(60, vocab=V, seed=1), random_corpus(60, seed=2), train[:60]):
        ours = model.log_probs(query)
        for i in range(len(query)):
            assert ours[i] == pytest.approx(reference.log_prob_at(query, i), rel=1e-10), i


def test_estimated_discounts_follow_count_of_counts():
    train = markov_corpus(2000, vocab=V)
    model = NGramModel.fit(train, vocab_size=V, order=3)
    reference = ReferenceKneserNey(train, V, 3)
    assert len(model.discounts) == 3
    assert all(DISCOUNT_RANGE[0] <= d <= DISCOUNT_RANGE[1] for d in model.discounts)
    assert model.discounts == pytest.approx([reference.discounts[n] for n in (1, 2, 3)])


# ---------------------------------------------------------------- unseen data and perplexity


@pytest.mark.parametrize("smoothing", ["add_k", "kneser_ney"])
def test_unseen_tokens_and_contexts_have_finite_log_probs(smoothing):
    train = np.tile([0, 1, 2, 3], 50)  # tokens 4..V-1 never seen; only 4 contexts ever seen
    model = NGramModel.fit(train, vocab_size=V, order=3, smoothing=smoothing)
    query = np.array([V - 1, 5, 0, 2, 1, 7, 7, 3, 0])
    log_probs = model.log_probs(query)
    assert np.all(np.isfinite(log_probs))
    assert np.all(log_probs < 0)
    assert np.isfinite(model.perplexity(query))


@pytest.mark.parametrize("smoothing", ["add_k", "kneser_ney"])
def test_training_perplexity_falls_with_order_on_structured_data(smoothing):
    train = markov_corpus(5000)
    perplexity = {
        order: NGramModel.fit(train, vocab_size=20, order=order, smoothing=smoothing, k=0.1).perplexity(train)
        for order in (1, 2, 3)
    }
    assert perplexity[3] < perplexity[2] < perplexity[1]


def test_kneser_ney_beats_add_one_on_held_out_data():
    train, held_out = markov_corpus(20000, seed=0), markov_corpus(5000, seed=1)
    kneser_ney = NGramModel.fit(train, vocab_size=20, order=3).perplexity(held_out)
    add_one = NGramModel.fit(train, vocab_size=20, order=3, smoothing="add_k", k=1.0).perplexity(held_out)
    assert kneser_ney < add_one


def test_bits_per_token_is_log2_perplexity():
    train = markov_corpus(1000)
    model = NGramModel.fit(train, vocab_size=20, order=2)
    assert model.bits_per_token(train) == pytest.approx(math.log2(model.perplexity(train)), rel=1e-12)


def test_order_one_kneser_ney_is_discounted_unigram_plus_uniform():
    train = np.array([0, 0, 0, 1, 1, 2])  # counts 3, 2, 1: n1 = n2 = 1, D = 1/3
    model = NGramModel.fit(train, vocab_size=4, order=1)
    d = 1 / 3
    expected = [(max(c - d, 0) + d * 3 / 4) / 6 for c in (3, 2, 1, 0)]
    assert model.discounts == pytest.approx([d])
    np.testing.assert_allclose(np.exp(model.log_probs(np.arange(4))), expected, rtol=1e-12)


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(order=0), "order must be an int >= 1; got 0"),
        (dict(smoothing="witten_bell"), "smoothing must be one of .*; got 'witten_bell'"),
        (dict(vocab_size=0), "vocab_size must be an int >= 1; got 0"),
        (dict(vocab_size=16384, order=5), r"vocab_size\*\*order must fit in int64"),
        (dict(k=0.0, smoothing="add_k"), "k must be > 0; got 0.0"),
        (dict(discount=1.5), r"discount must be in \(0, 1\] or None; got 1.5"),
        (dict(discount=0.0), r"discount must be in \(0, 1\] or None; got 0.0"),
    ],
)
def test_fit_rejects_bad_settings(kwargs, message):
    settings = dict(vocab_size=V, order=2) | kwargs
    with pytest.raises(ValueError, match=message):
        NGramModel.fit(random_corpus(50), **settings)


@pytest.mark.parametrize(
    "tokens, message",
    [
        (np.array([0, 3, 12, 1]), r"tokens must be in \[0, 12\) \(vocab_size\); got 12 at position 2"),
        (np.array([0, -1, 2]), r"tokens must be in \[0, 12\) \(vocab_size\); got -1 at position 1"),
        (np.zeros((2, 3), np.int64), r"tokens must be a 1-D array; got shape \(2, 3\)"),
        (np.array([0.0, 1.0]), "tokens must be integer ids; got dtype float64"),
    ],
)
def test_bad_tokens_are_rejected_by_fit_and_log_probs(tokens, message):
    with pytest.raises(ValueError, match=message):
        NGramModel.fit(tokens, vocab_size=V, order=2)
    model = NGramModel.fit(random_corpus(50), vocab_size=V, order=2)
    with pytest.raises(ValueError, match=message):
        model.log_probs(tokens)


def test_perplexity_of_nothing_is_an_error():
    model = NGramModel.fit(random_corpus(50), vocab_size=V, order=2)
    assert model.log_probs(np.array([], np.int64)).shape == (0,)
    with pytest.raises(ValueError, match="at least one token"):
        model.perplexity(np.array([], np.int64))
