"""Orbax checkpoints that hold everything needed to resume training or sample.

A workdir contains two checkpoint folders:

* ``checkpoints/``: the most recent ``keep`` training states.
* ``best/``: the single state with the lowest EMA validation loss.

Each checkpoint step has three items: ``state`` (the train-state pytree:
step, params, batch stats, constants, EMA params, optimizer state, PRNG key),
``normalizers`` (the array part of every fitted normalizer) and ``meta`` (JSON:
the config, the domains in training order, sequence length, channels and the
non-array part of every normalizer).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from timecraft_jax.data.normalizers import Normalizer

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not match the request."""


def config_to_json_dict(config: ml_collections.ConfigDict) -> dict:
    """Convert a config to plain JSON types (tuples become lists)."""
    return json.loads(config.to_json())


def config_from_json_dict(config_dict: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Rebuild a config saved by `config_to_json_dict`, with tuples restored."""
    config = ml_collections.ConfigDict(dict(config_dict))
    model = config.model
    for key in ("channel_mult", "attention_resolutions"):
        model[key] = tuple(model[key])
    return config


def split_normalizers(normalizers: Mapping[str, Normalizer]) -> tuple[dict, dict]:
    """Split normalizer state into an array pytree and a JSON-serializable dict."""
    arrays, scalars = {}, {}
    for domain, normalizer in normalizers.items():
        arrays[domain], scalars[domain] = {}, {}
        for key, value in normalizer.state_dict().items():
            if isinstance(value, (np.ndarray, np.generic)):
                arrays[domain][key] = np.asarray(value)
            else:
                scalars[domain][key] = value
        if not arrays[domain]:
            # Orbax cannot store an empty subtree; a marker keeps the domain present.
            arrays[domain]["_empty"] = np.zeros((), np.int8)
    if not arrays:
        # Orbax cannot store an empty item either (imported weights have no normalizers).
        arrays["_empty"] = np.zeros((), np.int8)
    return arrays, scalars


def merge_normalizers(arrays: Mapping[str, Mapping], scalars: Mapping[str, Mapping]) -> dict[str, Normalizer]:
    """Rebuild normalizers from the two halves written by `split_normalizers`."""
    normalizers = {}
    for domain, scalar_part in scalars.items():
        state = dict(scalar_part)
        domain_arrays = arrays.get(domain, {})
        for key, value in (domain_arrays.items() if isinstance(domain_arrays, Mapping) else ()):
            if key != "_empty":
                state[key] = np.asarray(value)
        normalizers[domain] = Normalizer.from_state_dict(state)
    return normalizers


@dataclasses.dataclass
class Restored:
    """A checkpoint read back from disk."""

    step: int
    state: Any
    config: ml_collections.ConfigDict
    meta: dict
    normalizers: dict[str, Normalizer]


def _manager(directory: Path, max_to_keep: int | None, best: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=True,
        best_fn=(lambda metrics: metrics["val_loss_ema"]) if best else None,
        best_mode="min",
        keep_checkpoints_without_metrics=not best,
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(
        directory.absolute(), options=options, item_names=("state", "normalizers", "meta")
    )


class CheckpointStore:
    """The last-k and best-by-validation checkpoint folders of one workdir."""

    def __init__(self, workdir: str | Path, keep: int = 3):
        if keep < 1:
            raise ValueError(f"training.keep_checkpoints must be >= 1, got {keep}")
        self.workdir = Path(workdir)
        self._latest = _manager(self.workdir / CHECKPOINT_DIR, keep, best=False)
        self._best = _manager(self.workdir / BEST_DIR, 1, best=True)

    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def save(self, step: int, state: Any, meta: dict, normalizers: Mapping[str, Normalizer],
             val_loss_ema: float | None = None) -> None:
        """Save `state` as step `step`; also as the best one when `val_loss_ema` beats it."""
        arrays, scalars = split_normalizers(normalizers)
        meta = dict(meta, normalizers=scalars, format_version=FORMAT_VERSION)
        state = _drop_empty(serialization.to_state_dict(jax.device_get(state)))
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            normalizers=ocp.args.StandardSave(arrays),
            meta=ocp.args.JsonSave(meta),
        )
        if step not in self._latest.all_steps():
            self._latest.save(step, args=args)
        if val_loss_ema is not None and np.isfinite(val_loss_ema) and step not in self._best.all_steps():
            self._best.save(step, args=args, metrics={"val_loss_ema": float(val_loss_ema)})
        self._latest.wait_until_finished()
        self._best.wait_until_finished()

    def restore(self, step: int | None = None, target: Any = None, best: bool = False) -> Restored:
        """Restore a checkpoint; `target` gives the pytree structure (optimizer state) when known.

        Without `target` the state comes back as nested dicts of arrays."""
        manager = self._best if best else self._latest
        if step is None:
            step = manager.best_step() if best else manager.latest_step()
        if step is None:
            folder = self.workdir / (BEST_DIR if best else CHECKPOINT_DIR)
            raise CheckpointError(
                f"no checkpoint found in {folder}; train first with "
                f"`python -m timecraft_jax.train --config CONFIG --workdir {self.workdir}`")
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(),
            normalizers=ocp.args.StandardRestore(),
            meta=ocp.args.JsonRestore(),
        ))
        meta = dict(restored["meta"])
        normalizers = merge_normalizers(restored["normalizers"], meta.get("normalizers", {}))
        config = config_from_json_dict(meta["config"])
        state = restored["state"]
        if target is not None:
            target_dict = serialization.to_state_dict(target)
            state = serialization.from_state_dict(target, _fill_missing(state, target_dict))
        return Restored(step=int(step), state=state, config=config, meta=meta,
                        normalizers=normalizers)

    def close(self) -> None:
        self._latest.close()
        self._best.close()


def load_checkpoint(workdir: str | Path, which: str = "best") -> Restored:
    """Load a checkpoint for sampling: `which` is 'best', 'latest' or a step number."""
    workdir = Path(workdir)
    if not (workdir / CHECKPOINT_DIR).is_dir() and not (workdir / BEST_DIR).is_dir():
        raise CheckpointError(
            f"{workdir} contains no checkpoints; train first with "
            f"`python -m timecraft_jax.train --config CONFIG --workdir {workdir}`")
    store = CheckpointStore(workdir, keep=1_000_000)
    try:
        if which == "best":
            if store._best.latest_step() is None:
                logging.info("no best checkpoint in %s yet; using the latest one", workdir)
                return store.restore()
            return store.restore(best=True)
        if which == "latest":
            return store.restore()
        try:
            step = int(which)
        except ValueError:
            raise CheckpointError(f"checkpoint must be 'best', 'latest' or a step number, got {which!r}") from None
        if step not in store._latest.all_steps():
            raise CheckpointError(
                f"step {step} not found in {workdir / CHECKPOINT_DIR}; available: {sorted(store._latest.all_steps())}")
        return store.restore(step)
    finally:
        store.close()


def write_imported_checkpoint(out_dir: str | Path, config: ml_collections.ConfigDict, variables: Mapping,
                              normalizers: Mapping[str, Normalizer] | None = None, step: int = 0) -> Path:
    """Write imported weights as a checkpoint that `timecraft_jax.sample` can load.

    The imported variables serve as both the raw and the EMA parameters; the
    optimizer state is left empty, so training cannot resume from it.
    """
    out_dir = Path(out_dir)
    state = {
        "step": np.asarray(step, np.int32),
        "params": variables["params"],
        "ema_params": variables["params"],
        "batch_stats": variables.get("batch_stats", {}),
        "constants": variables.get("constants", {}),
    }
    meta = {
        "config": config_to_json_dict(config),
        "domains": list(config.data.domains),
        "seq_len": int(config.data.seq_len),
        "channels": int(config.model.in_channels),
        "source": "import_torch",
    }
    store = CheckpointStore(out_dir, keep=1)
    try:
        store.save(step, state, meta, normalizers or {})
    finally:
        store.close()
    return out_dir


def _drop_empty(tree: Mapping) -> dict:
    """Drop empty sub-dicts, which Orbax cannot store."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            value = _drop_empty(value)
            if not value:
                continue
        out[key] = value
    return out


def _fill_missing(restored: Mapping, target: Mapping) -> dict:
    """Add back the empty sub-dicts of `target` that `_drop_empty` removed before saving."""
    out = dict(restored)
    for key, value in target.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, Mapping) and isinstance(out[key], Mapping):
            out[key] = _fill_missing(out[key], value)
    return out
