"""Convert PyTorch TimeCraft weights into timecraft-jax variables.

Flax module names mirror the PyTorch module paths with numeric indices joined
to the preceding name by underscores, so `input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.weight`
is `input_blocks_1_1/transformer_blocks_0/attn1/to_out_0/kernel`. Conv weights
`(out, in, k)` become `(k, in, out)`, Linear weights `(out, in)` become
`(in, out)`, norm weights become 'scale' and embedding weights 'embedding'.
Every converted array is checked against the shapes of `init_variables`, and
unknown or missing names raise a ValueError that lists them.

Command line (the config is a Python file with `get_config()`, loaded with
importlib):

    python -m timecraft_jax.import_torch --checkpoint last.ckpt --config configs/timedp.py --out DIR [--use_ema]

`.ckpt` files need PyTorch (`pip install torch`); `.npz` and `.safetensors`
files do not.
"""

import argparse
import importlib.util
import logging
import re
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from timecraft_jax.models import build_model, init_variables

UNET_PREFIX = "model.diffusion_model."
CONDITIONER_PREFIX = "cond_stage_model."
EMA_PREFIX = "model_ema."
EMA_UNET_PREFIX = "model_ema.diffusion_model"

# Reference weights with no counterpart here: never-used ResBlock layers,
# the fixed loss weights and the diffusion schedule (recomputed from the config).
_DEAD_UNET_PATTERN = re.compile(r"(^|\.)cond_emb_layers\.")
IGNORED_TOP_LEVEL = frozenset(
    {
        "logvar",
        "lvlb_weights",
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "shift_coef",
        "ddim_coef",
        "model_ema.num_updates",
        "model_ema.decay",
    }
)

FlaxPath = Tuple[str, ...]

_log = logging.getLogger(__name__)


def torch_module_to_flax(module: str) -> FlaxPath:
    """Map a PyTorch module path to a flax path: `a.1.b.0` becomes `('a_1', 'b_0')`."""
    path: List[str] = []
    for part in module.split("."):
        if part.isdigit() and path:
            path[-1] = f"{path[-1]}_{part}"
        else:
            path.append(part)
    return tuple(path)


def flax_to_torch_name(path: FlaxPath) -> str:
    """Inverse of the naming rule for a flax leaf path, used in error messages."""
    *modules, leaf = path
    torch_leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight", "mean": "running_mean",
                  "var": "running_var"}.get(leaf, leaf)
    parts = [re.sub(r"_(\d+)", r".\1", m) for m in modules]
    return ".".join(parts + [torch_leaf])


def _convert_weight(
    torch_name: str, value: np.ndarray, module: FlaxPath, leaves: Iterable[str]
) -> Tuple[FlaxPath, np.ndarray]:
    """Pick the flax leaf for a `.weight` tensor from the leaves the target module has."""
    leaves = set(leaves)
    if "kernel" in leaves:
        if value.ndim == 3:
            return module + ("kernel",), np.transpose(value, (2, 1, 0))
        if value.ndim == 2:
            return module + ("kernel",), value.T
        raise ValueError(f"{torch_name}: weight of shape {value.shape} is neither a Conv1d nor a Linear weight")
    if "scale" in leaves:
        return module + ("scale",), value
    if "embedding" in leaves:
        return module + ("embedding",), value
    raise ValueError(f"{torch_name}: flax module {'/'.join(module)} has no weight-like leaf ({sorted(leaves)})")


def _convert_collections(
    sd: Mapping[str, np.ndarray],
    expected: Mapping[str, Mapping[FlaxPath, object]],
    name_map,
    what: str,
) -> Dict[str, dict]:
    """Convert `sd` into the collections of `expected` ({collection: {path: shape-struct}}).

    `name_map(torch_name)` returns `(collection, module_path, leaf)` for a
    tensor, None for a known-and-ignored tensor, or raises KeyError when the
    name is unknown.
    """
    modules: Dict[str, Dict[FlaxPath, set]] = {}
    for collection, flat in expected.items():
        for path in flat:
            modules.setdefault(collection, {}).setdefault(path[:-1], set()).add(path[-1])

    converted: Dict[str, Dict[FlaxPath, np.ndarray]] = {c: {} for c in expected}
    unknown, mismatched = [], []
    for torch_name, value in sd.items():
        try:
            target = name_map(torch_name)
        except KeyError:
            unknown.append(torch_name)
            continue
        if target is None:
            continue
        collection, module, leaf = target
        leaves = modules.get(collection, {}).get(module)
        if leaves is None:
            unknown.append(torch_name)
            continue
        value = np.asarray(value)
        if leaf == "weight":
            path, array = _convert_weight(torch_name, value, module, leaves)
        else:
            path, array = module + (leaf,), value
        if path not in expected[collection]:
            unknown.append(torch_name)
            continue
        want = tuple(expected[collection][path].shape)
        if tuple(array.shape) != want:
            mismatched.append(f"{torch_name} -> {'/'.join(path)}: got {tuple(array.shape)}, expected {want}")
            continue
        converted[collection][path] = np.ascontiguousarray(array, dtype=np.float32)

    missing = [
        f"{flax_to_torch_name(path)} ({collection}: {'/'.join(path)})"
        for collection, flat in expected.items()
        for path in flat
        if path not in converted[collection]
    ]
    problems = []
    if unknown:
        problems.append(f"unknown keys: {sorted(unknown)}")
    if missing:
        problems.append(f"missing keys: {sorted(missing)}")
    if mismatched:
        problems.append(f"shape mismatches: {mismatched}")
    if problems:
        raise ValueError(f"cannot convert the {what} state dict; " + "; ".join(problems))
    return {collection: unflatten_dict(flat) for collection, flat in converted.items()}


def _expected_shapes(model_config, seq_len: int) -> dict:
    model = build_model(model_config, seq_len)
    return jax.eval_shape(lambda rng: init_variables(model, rng), jax.random.PRNGKey(0))


def _unet_name_map(torch_name: str):
    if torch_name == "null_classes_emb":
        return ("params", (), "null_classes_emb")
    if _DEAD_UNET_PATTERN.search(torch_name):
        return None
    module, _, leaf = torch_name.rpartition(".")
    if leaf not in ("weight", "bias") or not module:
        raise KeyError(torch_name)
    return ("params", torch_module_to_flax(module), leaf)


def convert_unet_state_dict(sd: Mapping[str, np.ndarray], model_config, seq_len: int) -> dict:
    """Convert a bare `UNetModel` state dict (names like `input_blocks.1.0.in_layers.0.weight`).

    Text-fusion weights `conditioning_mlp.*` are accepted when `text_dim > 0`.
    Returns the flax 'params' tree of the 'unet' submodule.
    """
    shapes = _expected_shapes(model_config, seq_len)
    expected = {"params": flatten_dict(shapes["params"]["unet"])}
    return _convert_collections(sd, expected, _unet_name_map, "UNet")["params"]


def convert_conditioner_state_dict(sd: Mapping[str, np.ndarray], model_config, seq_len: int) -> Tuple[dict, dict, dict]:
    """Convert a bare conditioner state dict.

    Names are `share_encoder.*`, `mask_ffn.*` and `latents` for the prototype
    conditioner, or `in_encoder.*` and `out_encoder.*` for the encoder.

    Returns `(params, batch_stats, constants)` for the 'conditioner' submodule;
    `constants` is `{'prototypes': ...}` for the prototype conditioner and
    empty for the encoder. `num_batches_tracked` counters are ignored.
    """
    if model_config.conditioner == "none":
        raise ValueError("model.conditioner is 'none'; there is no conditioner to convert")
    shapes = _expected_shapes(model_config, seq_len)
    expected = {
        "params": flatten_dict(shapes["params"]["conditioner"]),
        "batch_stats": flatten_dict(shapes["batch_stats"]["conditioner"]),
    }
    if "constants" in shapes:
        expected["constants"] = flatten_dict(shapes["constants"]["conditioner"])

    def name_map(torch_name):
        if torch_name == "latents":
            return ("constants", (), "prototypes")
        module, _, leaf = torch_name.rpartition(".")
        if leaf == "num_batches_tracked":
            return None
        if leaf in ("running_mean", "running_var"):
            return ("batch_stats", torch_module_to_flax(module), "mean" if leaf == "running_mean" else "var")
        if leaf not in ("weight", "bias") or not module:
            raise KeyError(torch_name)
        return ("params", torch_module_to_flax(module), leaf)

    converted = _convert_collections(sd, expected, name_map, "conditioner")
    return converted["params"], converted["batch_stats"], converted.get("constants", {})


def convert_state_dict(sd: Mapping[str, np.ndarray], model_config, seq_len: int, use_ema: bool = False) -> dict:
    """Convert a Lightning `LatentDiffusion` state dict into `init_variables`-shaped variables.

    UNet weights come from `model.diffusion_model.*`, or with `use_ema=True`
    from the EMA copies `model_ema.diffusion_model<name without dots>`; the
    reference keeps no EMA of the conditioner. Schedule buffers, `logvar`, the
    EMA counters and the unused `cond_emb_layers` are ignored; any other
    unknown or missing name raises ValueError.
    """
    unet_sd: Dict[str, np.ndarray] = {}
    conditioner_sd: Dict[str, np.ndarray] = {}
    ema_sd: Dict[str, np.ndarray] = {}
    unknown = []
    for name, value in sd.items():
        if name.startswith(UNET_PREFIX):
            unet_sd[name[len(UNET_PREFIX):]] = value
        elif name.startswith(CONDITIONER_PREFIX):
            conditioner_sd[name[len(CONDITIONER_PREFIX):]] = value
        elif name in IGNORED_TOP_LEVEL:
            continue
        elif name.startswith(EMA_UNET_PREFIX):
            ema_sd[name] = value
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"cannot convert the checkpoint; unknown keys: {sorted(unknown)}")

    dotless_to_name = {EMA_UNET_PREFIX + name.replace(".", ""): name for name in unet_sd}
    stray = sorted(k for k in ema_sd if k not in dotless_to_name)
    if stray:
        raise ValueError(f"cannot convert the checkpoint; unknown EMA keys: {stray}")
    if use_ema:
        if not ema_sd:
            raise ValueError("use_ema=True but the checkpoint has no 'model_ema.*' weights; convert without --use_ema")
        missing = sorted(k for k, name in dotless_to_name.items()
                         if k not in ema_sd and not _DEAD_UNET_PATTERN.search(name))
        if missing:
            raise ValueError(f"cannot convert the checkpoint; missing EMA keys: {missing}")
        unet_sd = {name: ema_sd[k] for k, name in dotless_to_name.items() if k in ema_sd}

    variables = {"params": {"unet": convert_unet_state_dict(unet_sd, model_config, seq_len)}}
    if model_config.conditioner != "none":
        params, batch_stats, constants = convert_conditioner_state_dict(conditioner_sd, model_config, seq_len)
        variables["params"]["conditioner"] = params
        variables["batch_stats"] = {"conditioner": batch_stats}
        if constants:
            variables["constants"] = {"conditioner": constants}
    elif conditioner_sd:
        raise ValueError(
            f"model.conditioner is 'none' but the checkpoint has conditioner weights: {sorted(conditioner_sd)}"
        )
    return variables


def load_state_dict(path) -> Dict[str, np.ndarray]:
    """Read a state dict from `.ckpt`/`.pt` (PyTorch pickle), `.npz` or `.safetensors` as numpy arrays.

    A Lightning checkpoint's weights are taken from its 'state_dict' entry.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path) as data:
            return {name: data[name] for name in data.files}
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        return dict(load_file(str(path)))
    if suffix in (".ckpt", ".pt", ".pth"):
        try:
            import torch
        except ImportError as error:
            raise ImportError(
                f"reading {path} needs PyTorch; run `pip install torch` or convert it to .safetensors/.npz first"
            ) from error
        # NOTE: weights_only=False unpickles arbitrary objects (Lightning stores
        # hyper-parameters that way), so only load checkpoints you trust.
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=False)
        state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
        arrays = {}
        for name, tensor in state_dict.items():
            if not hasattr(tensor, "detach"):
                raise ValueError(f"{path}: state dict entry {name!r} is a {type(tensor).__name__}, not a tensor")
            tensor = tensor.detach().cpu()
            arrays[name] = (tensor.float() if tensor.is_floating_point() else tensor).numpy()
        return arrays
    raise ValueError(f"unsupported checkpoint format {suffix!r} for {path}; use .ckpt, .pt, .npz or .safetensors")


def load_config(config_path):
    """Load `get_config()` from a Python config file."""
    config_path = Path(config_path)
    if not config_path.is_file():
        raise FileNotFoundError(f"config file {config_path} not found")
    spec = importlib.util.spec_from_file_location(f"_timecraft_config_{config_path.stem}", config_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {config_path} defines no get_config()")
    return module.get_config()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description="Convert a PyTorch TimeCraft checkpoint into a timecraft-jax checkpoint."
    )
    parser.add_argument("--checkpoint", required=True, help="Lightning .ckpt, .pt, .npz or .safetensors state dict.")
    parser.add_argument("--config", required=True, help="Python config file whose get_config() matches the checkpoint.")
    parser.add_argument("--out", required=True, help="Output directory of the converted checkpoint.")
    parser.add_argument("--use_ema", action="store_true", help="Take UNet weights from the EMA copies (model_ema.*).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    config = load_config(args.config)
    state_dict = load_state_dict(args.checkpoint)
    _log.info("read %d tensors from %s", len(state_dict), args.checkpoint)
    variables = convert_state_dict(state_dict, config.model, config.data.seq_len, use_ema=args.use_ema)

    from timecraft_jax.checkpointing import write_imported_checkpoint

    write_imported_checkpoint(args.out, config, variables)
    _log.info("wrote the converted checkpoint to %s", args.out)


if __name__ == "__main__":
    main()
