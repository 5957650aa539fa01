"""The training loop: `train_and_evaluate(config, workdir)`, read top to bottom.

Setup (processes, mesh, data, model, optimiser, resume) -> compiled steps -> loop (train,
log, evaluate, checkpoint) -> final evaluation and figures. The same loop runs on one device,
a mesh of devices and many processes (see `jaxseg.train.parallel`). It syncs with the devices
at logging intervals and, on a mesh, at least every `SYNC_EVERY` steps: CPU collectives
stall when too many steps are in flight; everything else is dispatched asynchronously.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from tqdm import tqdm

from jaxseg.metrics import scores
from jaxseg.tasks import segmentation
from jaxseg.train import parallel
from jaxseg.train.checkpoint import Checkpointer
from jaxseg.train.logging import MetricsLogger, read_metrics, save_curves, save_prediction_figure
from jaxseg.train.optim import nonfinite_counts
from jaxseg.train.program import compile_program

log = logging.getLogger("jaxseg")
SYNC_EVERY = 16


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite updates: the run stops, checkpoints stay intact."""


def enable_compilation_cache(directory) -> None:
    """JAX's persistent compilation cache: a restart or a second run starts in seconds."""
    if directory:
        directory = Path(directory).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(directory))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


@functools.partial(jax.jit, donate_argnums=0)
def _accumulate(total, metrics):
    return jax.tree.map(jnp.add, total, metrics)


def summarize(total, count) -> dict:
    """Means of accumulated scalar metrics plus scores of the accumulated confusion matrix."""
    total = jax.device_get(total)
    count = float(count)
    confusion = total.pop("confusion")
    summary = {k: float(v) / count for k, v in total.items() if k != "skipped"}
    if "skipped" in total:
        summary["skipped"] = int(total["skipped"])
    summary.update(scores(confusion))
    return summary


def evaluate(state, hp, batches, compiled_eval, *, place=jax.device_put, figure=None) -> dict:
    """Stream the evaluation batches (host-local; `place` puts them on the devices): summed
    losses and confusion matrices, one division by the number of valid images at the end.
    `figure(host_batch, device_batch)` is called with the first batch."""
    total = None
    for index in range(len(batches)):
        host = batches[index]
        batch = place(host)
        metrics = compiled_eval(state, batch, hp)
        total = metrics if total is None else _accumulate(total, metrics)
        if index % SYNC_EVERY == SYNC_EVERY - 1:
            jax.block_until_ready(total)
        if index == 0 and figure is not None:
            figure(host, batch)
    images = total.pop("images")
    return summarize(total, jax.device_get(images))


def train_and_evaluate(config, workdir) -> dict:
    """Train `config` in `workdir`, resuming from its latest checkpoint. Returns the final
    validation metrics."""
    parallel.initialize_distributed(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    enable_compilation_cache(config.get("compilation_cache", ""))
    is_main = jax.process_index() == 0
    train_cfg = config.train
    mesh = parallel.make_mesh(config.get("mesh"))
    parallel.check_batch_size(train_cfg.batch_size, mesh)
    parallel.check_batch_size(train_cfg.eval_batch_size, mesh, "config.train.eval_batch_size")
    place = functools.partial(parallel.global_batch, mesh=mesh)
    sync_every = SYNC_EVERY if mesh.size > 1 else None

    # ------------------------------------------------------------------ data
    data = segmentation.make_data(config, workdir)
    train_iter, val_batches = data.train, data.val
    hp = parallel.replicate(segmentation.loss_hyperparameters(config, data.class_weights), mesh)

    # ------------------------------------------------------------------ model, optimiser, resume
    program = compile_program(config, mesh)
    checkpoints = Checkpointer(workdir / "checkpoints", keep=train_cfg.keep_checkpoints)
    start = checkpoints.latest_step()
    if start is None:
        state = program.init()
    else:
        state = checkpoints.restore(start, program.abstract_state, train_iter)
        print(f"resumed from the checkpoint of step {start} in {checkpoints.directory}")
    start = int(state.step)
    compiled_train, compiled_eval = program.train, program.eval
    logger = MetricsLogger(workdir, enabled=is_main, tensorboard=config.get("tensorboard", True))
    config_dict = config.to_dict()

    def figure(step):
        def draw(host, batch):
            predictions = program.predict(state, batch)  # every process takes part ...
            if is_main:  # ... process 0 draws its own rows
                save_prediction_figure(
                    workdir / "figures" / f"val_step_{step:06d}.png", host["image"], host["label"],
                    parallel.local_rows(predictions), num_classes=config.num_classes,
                    ignore_index=config.data.ignore_index, class_names=list(data.class_names),
                )
        return draw

    # ------------------------------------------------------------------ loop
    total, count, last_log, val = None, 0, time.perf_counter(), {}
    progress = tqdm(total=train_cfg.steps, initial=start, disable=not (is_main and train_cfg.progress),
                    dynamic_ncols=True, desc="train")
    stop = min(train_cfg.steps, train_cfg.stop_after) if train_cfg.get("stop_after") else train_cfg.steps
    for step in range(start + 1, stop + 1):
        batch = place(next(train_iter))
        state, metrics = compiled_train(state, batch, hp)
        total = metrics if total is None else _accumulate(total, metrics)
        count += 1
        if sync_every and step % sync_every == 0:
            jax.block_until_ready(total)
        progress.update(1)

        if step % train_cfg.log_every == 0 or step == stop:
            consecutive, _ = jax.device_get(nonfinite_counts(state.opt_state))
            summary = summarize(total, count)
            elapsed = time.perf_counter() - last_log
            summary["images_per_second"] = count * train_cfg.batch_size / elapsed
            logger.write(step, "train", summary)
            progress.set_postfix(loss=f"{summary['loss']:.3f}", miou=f"{summary['miou']:.3f}",
                                 ips=f"{summary['images_per_second']:.0f}")
            if summary["skipped"]:
                log.warning("step %d: %d non-finite updates skipped in the last %d steps", step, summary["skipped"], count)
            if consecutive >= config.optim.max_consecutive_nonfinite:
                checkpoints.wait()
                raise NonFiniteError(
                    f"step {step}: {consecutive} consecutive non-finite updates (limit "
                    f"config.optim.max_consecutive_nonfinite={config.optim.max_consecutive_nonfinite}); "
                    f"the last checkpoint (step {checkpoints.latest_step()}) is intact"
                )
            total, count, last_log = None, 0, time.perf_counter()

        evaluate_now = step % train_cfg.eval_every == 0 or step == train_cfg.steps
        if evaluate_now:
            val = evaluate(state, hp, val_batches, compiled_eval, place=place, figure=figure(step))
            logger.write(step, "val", val)
            progress.write(f"step {step}: val mIoU {val['miou']:.4f}, pixel accuracy {val['pixel_accuracy']:.4f}")
            last_log = time.perf_counter()
        if step % train_cfg.checkpoint_every == 0 or step == stop:
            metrics = {"val_miou": val["miou"]} if evaluate_now else None
            checkpoints.save(step, state, train_iter, config_dict, metrics)

    # ------------------------------------------------------------------ wrap up
    progress.close()
    if not val:  # resumed at the last step: nothing trained, evaluate what is there
        val = evaluate(state, hp, val_batches, compiled_eval, place=place)
    checkpoints.wait()
    checkpoints.close()
    if is_main:
        save_curves(workdir / "figures" / "curves.png", read_metrics(workdir))
    logger.close()
    return val
