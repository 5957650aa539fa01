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
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxseg import tasks
from jaxseg.ablation import report, variants
from jaxseg.figures import read_metrics, save_curves
from jaxseg.tasks.base import Task
from jaxseg.train import parallel
from jaxseg.train.checkpoint import Checkpointer
from jaxseg.train.logging import MetricsLogger
from jaxseg.train.optim import nonfinite_counts
from jaxseg.train.preemption import Preempted, PreemptionWatch
from jaxseg.train.program import Program, compile_member_program, compile_program

log = logging.getLogger("jaxseg")
SYNC_EVERY = 16


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite updates: the run stops, checkpoints stay intact."""


def check_writable(workdir: Path) -> Path:
    """Create `workdir` and write a probe file, so an unwritable or full disk is an error at
    start rather than at the first checkpoint."""
    probe = workdir / f".write_probe_{jax.process_index()}"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as error:
        raise OSError(f"workdir {workdir} is not writable: {error}") from error
    return workdir


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


def summarize(total, count, task) -> dict:
    """Means of accumulated scalar metrics (`count` steps, or valid images or tokens) plus the
    task's scores of its accumulated statistics (e.g. a confusion matrix)."""
    total = dict(jax.device_get(total))
    count = float(count)
    statistics = {k: total.pop(k) for k in task.statistics if k in total}
    summary = {k: float(v) / count for k, v in total.items() if k != "skipped"}
    if "skipped" in total:
        summary["skipped"] = int(total["skipped"])
    summary.update(task.scores(summary, statistics))
    return summary


def best_index(values: list[dict], task) -> int:
    """The index of the best of several metric dicts by the task's key metric."""
    keys = [v[task.key_metric] for v in values]
    return int(np.argmax(keys) if task.higher_is_better else np.argmin(keys))


def global_rows(tree):
    """Host NumPy copies of a pytree of batch-split arrays, all processes' rows."""
    if all(leaf.is_fully_addressable for leaf in jax.tree.leaves(tree)):
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def evaluate(
    state,
    hp,
    batches,
    compiled_eval,
    *,
    task,
    per_member=lambda tree: [tree],
    place=jax.device_put,
    figure=None,
    with_predictions=None,
) -> list[dict]:
    """Stream the evaluation batches (host-local; `place` puts them on the devices): summed
    losses and statistics, one division by the number of valid images (or tokens) at the
    end; one summary per member (`per_member` splits the totals: `Program.per_member`).
    `figure(host_batch, device_batch)` is called with the first batch.

    Tasks whose metrics are not sums (`task.collects_predictions`, e.g. COCO mAP) are
    evaluated by `with_predictions(state, batch, hp)` -> (metrics, predictions) instead, one
    forward pass per batch; the predictions, gathered from all processes, go to their
    `task.evaluator()`, whose `result()` joins the summary."""
    collector = task.evaluator() if task.collects_predictions else None
    if collector is not None and with_predictions is None:
        raise ValueError(f"{type(task).__module__}: evaluation needs the predictions of a single model")
    total = None
    for index in range(len(batches)):
        host = batches[index]
        batch = place(host)
        if collector is None:
            metrics = compiled_eval(state, batch, hp)
        else:
            metrics, predictions = with_predictions(state, batch, hp)
            task.add_to(collector, global_rows(batch), global_rows(predictions))
        total = metrics if total is None else _accumulate(total, metrics)
        if index % SYNC_EVERY == SYNC_EVERY - 1:
            jax.block_until_ready(total)
        if index == 0 and figure is not None:
            figure(host, batch)
    summaries = []
    for member_total in per_member(jax.device_get(total)):
        member_total = dict(member_total)
        summaries.append(summarize(member_total, member_total.pop("count"), task))
    extra = collector.result() if collector is not None else {}
    return [{**summary, **extra} for summary in summaries]


class Setup(NamedTuple):
    """The compiled program, its placed hyperparameters and the member names (`[None]` for
    one model)."""

    program: Program
    hp: dict
    names: list


def compile_for(config, mesh, task, workdir, data) -> Setup:
    """One model, or the K members of `config.ablation`, of `task`."""
    members = variants.members(config)
    if not members:
        program = compile_program(config, mesh, task)
        return Setup(program, program.place_hp(task.hyperparameters(data)), [None])
    setup = variants.member_setup(config, members, task, workdir)
    program = compile_member_program(
        config, mesh, task, seeds=setup.seeds, weight_decays=setup.weight_decays, active_terms=setup.active_terms
    )
    if jax.process_index() == 0:
        report.save_members(workdir, members, report.Ranking(task.key_metric, task.higher_is_better))
    return Setup(program, program.place_hp(setup.hp), [m.name for m in members])


def of_member(name) -> str:
    """ " (member NAME)" in messages about an ablation member; "" for a single model."""
    return "" if name is None else f" (member {name})"


def write_figures(workdir: Path, names: list, task) -> None:
    """The run's closing figures: the ablation report of several members, else the curves."""
    if names != [None]:
        report.write_report(workdir)
    else:
        save_curves(workdir / "figures" / "curves.png", read_metrics(workdir), keys=("loss", task.key_metric))


def final_metrics(vals: list[dict], names: list, task) -> dict:
    """The returned metrics: the model's, or the best member's with every member's."""
    best = best_index(vals, task)
    if names == [None]:
        return vals[0]
    return {**vals[best], "best_member": names[best], "members": dict(zip(names, vals))}


def restore_or_init(checkpoints: Checkpointer, program: Program, train_iter):
    """(state, its step): the latest checkpoint's (with the data iterator's position) or a new one."""
    start = checkpoints.latest_step()
    if start is None:
        state = program.init()
    else:
        state = checkpoints.restore(start, program.abstract_state, train_iter)
        print(f"resumed from the checkpoint of step {start} in {checkpoints.directory}")
    return state, int(np.max(jax.device_get(state.step)))


def log_training(
    logger, step: int, total, count: int, elapsed: float, *, task, program, names, data, units: int
) -> list[dict]:
    """Each member's summary of the last `count` steps (throughput of `units` images or tokens
    a step, skipped bad samples), written to the metrics log; warns of skipped non-finite updates."""
    summaries = [summarize(part, count, task) for part in program.per_member(jax.device_get(total))]
    bad_samples = data.skipped_samples() if getattr(data, "skipped_samples", None) else None
    for name, summary in zip(names, summaries):
        summary[f"{task.throughput_unit}_per_second"] = count * units / elapsed
        if bad_samples is not None:
            summary["bad_samples_skipped"] = bad_samples
        logger.write(step, "train", summary, member=name)
        if summary["skipped"]:
            log.warning(
                "step %d%s: %d non-finite updates skipped in the last %d steps",
                step,
                of_member(name),
                summary["skipped"],
                count,
            )
    return summaries


def stop_if_diverged(state, step: int, names: list, limit: int, checkpoints: Checkpointer) -> None:
    """Raise `NonFiniteError` once a member's consecutive non-finite updates reach `limit`."""
    consecutive = np.atleast_1d(jax.device_get(nonfinite_counts(state.opt_state)[0]))
    worst = int(np.argmax(consecutive))
    if consecutive[worst] >= limit:
        checkpoints.wait()
        raise NonFiniteError(
            f"step {step}: {consecutive[worst]} consecutive non-finite updates{of_member(names[worst])} "
            f"(limit config.optim.max_consecutive_nonfinite={limit}); "
            f"the last checkpoint (step {checkpoints.latest_step()}) is intact"
        )


def checked_mesh(config):
    """The device mesh of `config.mesh`, with the batch sizes checked to split over it."""
    mesh = parallel.make_mesh(config.get("mesh"))
    parallel.check_batch_size(config.train.batch_size, mesh)
    parallel.check_batch_size(config.train.eval_batch_size, mesh, "config.train.eval_batch_size")
    return mesh


def prediction_figure(program, task, workdir: Path, data, is_main: bool, step: int, state, member: int):
    """`evaluate`'s `figure` callback at `step`: `member`'s predictions of the first validation
    batch (every process takes part), drawn by process 0 from its own rows; None when the task
    draws nothing."""
    if not task.draws_predictions:
        return None

    def draw(host, batch):
        predictions = program.predict(state, batch, member)
        if is_main:
            task.save_figure(workdir / "figures" / f"val_step_{step:06d}.png", host,
                             jax.tree.map(parallel.local_rows, predictions), data)  # fmt: skip

    return draw


def train_and_evaluate(config, workdir, *, task: Task | None = None) -> dict:
    """Train `config` in `workdir`, resuming from its latest checkpoint. Returns the final
    validation metrics. `task`: the config's task when the caller has built it already."""
    parallel.initialize_distributed(config)
    workdir = check_writable(Path(workdir))
    enable_compilation_cache(config.get("compilation_cache", ""))
    is_main = jax.process_index() == 0
    train_cfg = config.train
    mesh = checked_mesh(config)
    place = functools.partial(parallel.global_batch, mesh=mesh)
    sync_every = SYNC_EVERY if mesh.size > 1 else None

    # ------------------------------------------------------------------ task, data, program, resume
    task = task or tasks.get(config)
    data = task.make_data(workdir)
    train_iter = data.train
    program, hp, names = compile_for(config, mesh, task, workdir, data)
    checkpoints = Checkpointer(workdir / "checkpoints", keep=train_cfg.keep_checkpoints)
    state, start = restore_or_init(checkpoints, program, train_iter)
    logger = MetricsLogger(workdir, enabled=is_main, tensorboard=config.get("tensorboard", True))
    config_dict = config.to_dict()
    shown = 0  # the member whose predictions are drawn and whose loss the progress bar shows
    units = task.units_per_batch(train_cfg.batch_size)
    sign = 1.0 if task.higher_is_better else -1.0
    run_evaluation = functools.partial(
        evaluate, hp=hp, batches=data.val, compiled_eval=program.eval, task=task, per_member=program.per_member,
        place=place, with_predictions=program.eval_with_predictions,
    )  # fmt: skip
    figure = functools.partial(prediction_figure, program, task, workdir, data, is_main)

    # ------------------------------------------------------------------ loop
    total, count, last_log, vals = None, 0, time.perf_counter(), []
    progress = tqdm(total=train_cfg.steps, initial=start, disable=not (is_main and train_cfg.progress),
                    dynamic_ncols=True, desc="train")  # fmt: skip
    stop = min(train_cfg.steps, train_cfg.stop_after) if train_cfg.get("stop_after") else train_cfg.steps
    with PreemptionWatch() as preemption:
        for step in range(start + 1, stop + 1):
            batch = place(next(train_iter))
            state, metrics = program.train(state, batch, hp)
            total = metrics if total is None else _accumulate(total, metrics)
            count += 1
            if sync_every and step % sync_every == 0:
                jax.block_until_ready(total)
            progress.update(1)

            if step % train_cfg.log_every == 0 or step == stop:
                summaries = log_training(logger, step, total, count, time.perf_counter() - last_log, task=task,
                                         program=program, names=names, data=data, units=units)  # fmt: skip
                progress.set_postfix(
                    **task.progress(summaries[shown]),
                    per_s=f"{summaries[shown][f'{task.throughput_unit}_per_second']:.0f}",
                    **({} if names[shown] is None else {"member": names[shown]}),
                )
                stop_if_diverged(state, step, names, config.optim.max_consecutive_nonfinite, checkpoints)
                total, count, last_log = None, 0, time.perf_counter()

            evaluate_now = step % train_cfg.eval_every == 0 or step == train_cfg.steps
            if evaluate_now:
                vals = run_evaluation(state, figure=figure(step, state, shown))
                for name, val in zip(names, vals):
                    logger.write(step, "val", val, member=name)
                shown = best_index(vals, task)
                best = "" if names[shown] is None else f" (best member: {names[shown]})"
                progress.write(f"step {step}: val {task.describe(vals[shown])}{best}")
                last_log = time.perf_counter()
            saved = step % train_cfg.checkpoint_every == 0 or step == stop
            if saved:
                metrics = {"val_score": sign * vals[shown][task.key_metric]} if evaluate_now else None
                checkpoints.save(step, state, train_iter, config_dict, metrics)
            if preemption.requested(step):  # save where we are, then stop
                if not saved:
                    checkpoints.save(step, state, train_iter, config_dict)
                checkpoints.wait()
                checkpoints.close()
                progress.close()
                logger.close()
                raise Preempted(step, preemption.signum)

    # ------------------------------------------------------------------ wrap up
    progress.close()
    if not vals:  # resumed at the last step: nothing trained, evaluate what is there
        vals = run_evaluation(state)
    checkpoints.wait()
    checkpoints.close()
    if is_main:
        write_figures(workdir, names, task)
    logger.close()
    return final_metrics(vals, names, task)
