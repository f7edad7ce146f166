"""The training loop: data, sharding, logging, finiteness checks, checkpoints, resume."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from timecraft_jax import diffusion, xla_options
from timecraft_jax.checkpointing import CheckpointStore, config_to_json_dict
from timecraft_jax.data.batching import MultiDomainBatcher
from timecraft_jax.domain_data import DomainData, load_domain_data, validation_batches
from timecraft_jax.models import build_model, init_variables
from timecraft_jax.train_state import TrainState, create_train_state, make_eval_step, make_optimizer, make_train_step

# Config sections that must match a checkpoint for a run to resume from it.
_RESUME_SECTIONS = ("data", "model", "diffusion", "optimizer")


class TrainingDivergedError(RuntimeError):
    """The loss or gradient norm became NaN or infinite."""


class ConfigMismatchError(ValueError):
    """A workdir contains a checkpoint of a run with a different config."""


def make_mesh() -> Mesh:
    """Build a one-axis ('data') mesh over every visible device."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    devices = mesh.devices.size
    if batch_size < 1 or batch_size % devices:
        raise ValueError(f"config.data.batch_size={batch_size} must be a positive multiple of the {devices} "
                         f"device(s) of the data axis; set --config.data.batch_size={max(devices, batch_size - batch_size % devices)}")


def _check_resume_config(saved: dict, config: ml_collections.ConfigDict, workdir: Path) -> None:
    current = config_to_json_dict(config)
    for section in _RESUME_SECTIONS:
        if saved.get(section) != current.get(section):
            differing = sorted(
                key for key in set(saved.get(section, {})) | set(current.get(section, {}))
                if saved.get(section, {}).get(key) != current.get(section, {}).get(key))
            raise ConfigMismatchError(
                f"{workdir} contains a checkpoint trained with different config.{section} values for {differing}; "
                f"use a new --workdir or the saved config ({workdir / 'config.json'})")


def _batch_summary(x: np.ndarray) -> str:
    return (f"batch mean {np.nanmean(x):.4g}, std {np.nanstd(x):.4g}, min {np.nanmin(x):.4g}, "
            f"max {np.nanmax(x):.4g}, non-finite values {int(np.count_nonzero(~np.isfinite(x)))}")


class MetricsWriter:
    """JSON-lines metrics plus TensorBoard scalars in the workdir."""

    def __init__(self, workdir: Path):
        from tensorboardX import SummaryWriter

        self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")
        self._tensorboard = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self._jsonl.flush()
        for name, value in metrics.items():
            self._tensorboard.add_scalar(name, value, step)

    def close(self) -> None:
        self._jsonl.close()
        self._tensorboard.close()


def _evaluate(eval_step, state: TrainState, batches: list[np.ndarray], seed: int, sharding) -> dict[str, float]:
    """Mean validation losses over fixed batches with fixed keys, so values are comparable across steps."""
    totals: dict[str, float] = {}
    base = jax.random.PRNGKey(seed)
    for index, x in enumerate(batches):
        rng = jax.random.fold_in(base, 1_000_000 + index)
        metrics = jax.device_get(eval_step(state, {"x": jax.device_put(x, sharding)}, rng))
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + float(value) / len(batches)
    return totals


def train(config: ml_collections.ConfigDict, workdir: str | Path, stop_at_step: int | None = None) -> TrainState:
    """Train (or resume) the run in `workdir` and return the final train state.

    `stop_at_step` ends this call early after that many total steps, as a
    preemption would; the next call with the same workdir resumes there.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh()
    devices = mesh.devices.ravel().tolist()
    logging.info("JAX %s, backend %s, %d device(s): %s", jax.__version__, jax.default_backend(), len(devices),
                 ", ".join(str(d) for d in devices))
    check_batch_size(config.data.batch_size, mesh)
    # Built first so that an invalid model config fails before any data is prepared.
    model = build_model(config.model, config.data.seq_len)

    data = load_domain_data(config.data, config.seed)
    if data.channels != config.model.in_channels:
        raise ValueError(f"the prepared data has {data.channels} channel(s) but config.model.in_channels="
                         f"{config.model.in_channels}; set --config.model.in_channels={data.channels}")
    schedule = diffusion.schedule_from_config(config.diffusion)
    optimizer = make_optimizer(config.optimizer)

    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    state = create_train_state(init_variables(model, init_rng), optimizer, state_rng)
    num_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    logging.info("model: %s conditioner, %d trainable parameters", config.model.conditioner, num_params)

    store = CheckpointStore(workdir, keep=config.training.keep_checkpoints)
    meta = {
        "config": config_to_json_dict(config),
        "domains": data.domains,
        "seq_len": int(config.data.seq_len),
        "channels": int(data.channels),
    }
    if store.latest_step() is not None:
        restored = store.restore(target=state)
        _check_resume_config(restored.meta["config"], config, workdir)
        state = restored.state
        logging.info("resuming from the checkpoint at step %d in %s", restored.step, workdir)
    (workdir / "config.json").write_text(json.dumps(meta["config"], indent=2) + "\n", encoding="utf-8")

    replicated = NamedSharding(mesh, PartitionSpec())
    data_sharding = NamedSharding(mesh, PartitionSpec("data"))
    state = jax.device_put(state, replicated)
    train_step = xla_options.jit(make_train_step(model, schedule, optimizer, config),
                         in_shardings=(replicated, data_sharding), out_shardings=(replicated, replicated),
                         donate_argnums=(0,))
    eval_step = xla_options.jit(make_eval_step(model, schedule, config),
                        in_shardings=(replicated, data_sharding, replicated), out_shardings=replicated)
    batcher = MultiDomainBatcher({d: data.normalized[d]["train"] for d in data.domains},
                                 batch_size=config.data.batch_size, reweight=config.data.reweight, seed=config.seed)
    val_batches = validation_batches(data, config.data.batch_size, config.training.eval_batches, config.seed)

    start = int(jax.device_get(state.step))
    end = int(config.training.num_steps)
    if stop_at_step is not None:
        end = min(end, stop_at_step)
    if start >= end:
        logging.info("nothing to do: the checkpoint is at step %d and the run ends at step %d", start, end)
        store.close()
        return state
    writer = MetricsWriter(workdir)
    logging.info("training steps %d..%d at global batch %d on %d device(s)", start + 1, end,
                 config.data.batch_size, len(devices))
    try:
        state = _run_steps(config, state, start, end, train_step, eval_step, batcher, val_batches, data,
                           store, meta, writer, data_sharding)
    finally:
        writer.close()
        store.close()
    return state


def _run_steps(config, state, start, end, train_step, eval_step, batcher, val_batches, data: DomainData,
               store, meta, writer, data_sharding) -> TrainState:
    training = config.training
    pending: list[dict[str, Any]] = []
    interval_start, interval_time = start, time.perf_counter()
    progress = tqdm(total=end - start, initial=0, desc="train", unit="step", dynamic_ncols=True,
                    mininterval=1.0 if sys.stderr.isatty() else 30.0)
    step = start
    try:
        while step < end:
            x, _ = batcher.batch(step)
            state, metrics = train_step(state, {"x": jax.device_put(x, data_sharding)})
            pending.append(metrics)
            step += 1
            progress.update(1)
            last = step == end
            if step % training.log_every == 0 or last:
                values = jax.device_get(pending)
                _check_finite(values, interval_start, batcher)
                elapsed = time.perf_counter() - interval_time
                summary = {name: float(np.mean([v[name] for v in values])) for name in values[0]}
                summary["steps_per_sec"] = len(values) / max(elapsed, 1e-9)
                writer.write(step, summary)
                progress.set_postfix(loss=f"{summary['loss']:.4f}")
                remaining = (end - step) / summary["steps_per_sec"]
                logging.info("step %d: loss %.5f, grad_norm %.4g, %.2f steps/s, ETA %.0f s", step,
                             summary["loss"], summary["grad_norm"], summary["steps_per_sec"], remaining)
                pending, interval_start, interval_time = [], step, time.perf_counter()
            checkpoint_now = step % training.checkpoint_every == 0 or last
            if val_batches and (step % training.eval_every == 0 or checkpoint_now):
                val = _evaluate(eval_step, state, val_batches, config.seed, data_sharding)
                writer.write(step, val)
                logging.info("step %d: val_loss %.5f, val_loss_ema %.5f", step, val["val_loss"], val["val_loss_ema"])
            else:
                val = None
            if checkpoint_now:
                store.save(step, state, meta, data.normalizers,
                           val_loss_ema=None if val is None else val["val_loss_ema"])
    except KeyboardInterrupt:
        try:
            saved_step = int(jax.device_get(state.step))
            if pending:
                _check_finite(jax.device_get(pending), interval_start, batcher)
            store.save(saved_step, state, meta, data.normalizers)
            logging.warning("interrupted; saved a checkpoint at step %d so the run can resume", saved_step)
        except (RuntimeError, ValueError) as error:
            # The interrupt can land while a step owns the donated state buffers.
            logging.warning("interrupted at step %d; could not save a checkpoint (%s), the run will resume "
                            "from the previous one", step, error)
        raise
    finally:
        progress.close()
    return state


def _check_finite(values: list[dict], first_step: int, batcher: MultiDomainBatcher) -> None:
    """Raise TrainingDivergedError naming the first step whose loss or gradient norm is not finite."""
    for offset, metrics in enumerate(values):
        loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
        if np.isfinite(loss) and np.isfinite(grad_norm):
            continue
        step = first_step + offset  # Zero-based index of the batch; the step number is one higher.
        x, _ = batcher.batch(step)
        raise TrainingDivergedError(
            f"non-finite training values at step {step + 1} (checked steps {first_step + 1}..{first_step + len(values)}): "
            f"loss {loss}, grad_norm {grad_norm}; {_batch_summary(x)}. The last checkpoint was kept; lower "
            f"--config.optimizer.learning_rate or set --config.optimizer.grad_clip_norm=1.0")
