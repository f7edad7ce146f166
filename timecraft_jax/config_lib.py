"""Default configuration shared by every file in `configs/`.

Each config file calls `base_config()` and overrides what differs. The field
names here are the single source of truth for the whole package: models,
training, sampling and evaluation read them and nothing else.
"""

import ml_collections

# The twelve TimeDP training domains, in the reference's order.
IN_DOMAIN_NAMES = (
      "electricity", "solar", "wind", "traffic", "taxi", "pedestrian",
      "air", "temperature", "rain", "nn5", "fred_md", "exchange",
)
# Domains held out of training and used for the k-shot protocol.
UNSEEN_DOMAIN_NAMES = ("stock", "web")


def base_config() -> ml_collections.ConfigDict:
    """Return the TimeDP defaults (the reference's multi-domain setup)."""
    config = ml_collections.ConfigDict()
    config.seed = 0  # Seeds parameter init, batches, timesteps, noise and dropout.

    config.data = data = ml_collections.ConfigDict()
    data.data_root = "data"  # Folder with {domain}_{L}_{train|val}.npy and manifest.json.
    data.domains = IN_DOMAIN_NAMES  # Training domains, in this order (a tuple of names).
    data.seq_len = 96  # Window length L in time steps; a multiple of 8.
    data.normalizer = "centered_pit"  # centered_pit | pit | zscore | robust | minmax.
    data.per_channel_normalizer = False  # True: one normalizer per channel instead of pooled.
    data.univariate = True  # True: (N, T, C) windows become (N*C, T, 1), as the reference trains.
    data.reweight = True  # True: each domain is equally likely per drawn sample.
    data.batch_size = 128  # Global batch size, split over the data axis of the mesh.
    data.prepare_if_missing = True  # Build bundled domains into data_root when files are absent.
    data.max_windows_per_domain = -1  # Keep at most this many training windows per domain; -1 keeps all.

    config.model = model = ml_collections.ConfigDict()
    model.in_channels = 1  # C of the (B, T, C) input; must match the prepared data.
    model.model_channels = 64  # Width of the first UNet level.
    model.channel_mult = (1, 2, 4, 4)  # Width multiplier per UNet level.
    model.num_res_blocks = 2  # ResBlocks per encoder level (decoder has one more).
    model.attention_resolutions = (1, 2, 4)  # Downsample factors that get a transformer block.
    model.num_heads = 8  # Attention heads; head width = channels / heads.
    model.time_embed_dim = -1  # Timestep-embedding width; -1 means 4 * model_channels.
    model.conditioner = "prototype"  # prototype (TimeDP PAM) | encoder (one token) | none.
    model.num_prototypes = 16  # Prototype tokens M (conditioner=prototype).
    model.context_dim = 32  # Width D of each context token and of the conditioner stem.
    model.num_classes = 0  # Class labels added to the time embedding; 0 disables labels.
    model.text_dim = 0  # Width of text embeddings fused into the context; 0 disables text.
    model.text_fusion = "gated_add"  # add | gated_add.
    model.all_masked = "uniform"  # Rows whose prototype logits are all <= 0: uniform | null.
    model.dtype = "float32"  # Compute dtype: float32 | bfloat16 (params stay float32).

    config.diffusion = diffusion = ml_collections.ConfigDict()
    diffusion.num_timesteps = 200  # Diffusion steps T.
    diffusion.beta_schedule = "linear"  # linear (LDM sqrt-linspace) | cosine.
    diffusion.linear_start = 5e-4  # beta_1 of the linear schedule.
    diffusion.linear_end = 0.1  # beta_T of the linear schedule.
    diffusion.loss = "l1"  # l1 | l2, on the epsilon prediction.
    diffusion.cond_drop_prob = 0.5  # Per-token probability of swapping a context token for the null token.

    config.optimizer = optimizer = ml_collections.ConfigDict()
    optimizer.learning_rate = 1e-3  # Peak learning rate after warm-up.
    optimizer.warmup_steps = 1000  # Linear warm-up from 1e-6 * lr to lr, then constant.
    optimizer.weight_decay = 0.01  # AdamW decoupled weight decay on every parameter.
    optimizer.b1 = 0.9  # Adam beta1.
    optimizer.b2 = 0.999  # Adam beta2.
    optimizer.eps = 1e-8  # Adam epsilon.
    optimizer.grad_clip_norm = 0.0  # Global-norm gradient clipping; 0 disables it.

    config.training = training = ml_collections.ConfigDict()
    training.num_steps = 50_000  # Optimizer steps.
    training.log_every = 100  # Steps between metric lines and finiteness checks.
    training.eval_every = 1000  # Steps between EMA validation losses.
    training.eval_batches = 8  # Validation batches per evaluation.
    training.checkpoint_every = 1000  # Steps between checkpoints.
    training.keep_checkpoints = 3  # Most recent checkpoints kept (the best one is kept as well).
    training.ema_max_decay = 0.9999  # EMA decay is min(ema_max_decay, (1 + n) / (10 + n)).

    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.sampler = "ddpm"  # ddpm (ancestral, every step) | ddim.
    sampling.num_steps = 50  # DDIM steps S (< T); ignored by ddpm.
    sampling.eta = 0.0  # DDIM eta: 0 is deterministic, 1 is DDPM-like noise.
    sampling.timestep_spacing = "uniform"  # DDIM step selection: uniform | quad.
    sampling.reference_compatible = False  # True: DDIM timestep offset of the PyTorch reference.
    sampling.guidance_scale = 1.0  # Classifier-free guidance scale s; 1 is plain conditional.
    sampling.batch_size = 256  # Samples per compiled sampler call.
    sampling.use_ema = True  # Sample with EMA parameters.

    config.benchmark = benchmark = ml_collections.ConfigDict()
    benchmark.seeds = (0,)  # Training seeds; each table cell is the mean and std over them.
    benchmark.checkpoint = "best"  # Checkpoint sampled: best (lowest EMA validation loss) | latest.
    benchmark.unconditional = True  # Also train and score the same network with conditioner='none'.
    benchmark.num_prompts = 100  # In-domain prompt windows per domain, drawn from its training split.
    benchmark.repeats = 10  # Samples per prompt per round; sample j of a round follows prompt j // repeats.
    benchmark.rounds = 5  # In-domain rounds of num_prompts * repeats samples per domain and model.
    benchmark.unseen_domains = UNSEEN_DOMAIN_NAMES  # Held-out domains scored with the k-shot protocol.
    benchmark.k_shots = (3, 10, 100)  # Prompt counts k of the k-shot protocol.
    benchmark.num_test = 2000  # Test windows per unseen domain; fewer when the domain is too small.
    benchmark.test_filter_domains = ("web",)  # Unseen domains whose test windows get the percentile filter.
    benchmark.test_filter_percentile = 99.0  # The filter drops test windows whose max exceeds this percentile.
    return config


def load_config_file(path) -> ml_collections.ConfigDict:
    """Load `get_config()` from a Python config file such as configs/quickstart.py."""
    import importlib.util
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found; the configs live in the repository's configs/ folder")
    spec = importlib.util.spec_from_file_location(f"timecraft_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} does not define get_config()")
    return module.get_config()


def repository_config(name: str):
    """Path of configs/{name}.py in the source checkout this package runs from."""
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "configs" / f"{name}.py"


def domain_names(value) -> list[str]:
    """Domain names from `config.data.domains`.

    Accepts a tuple of names, a comma-separated string ("electricity,exchange")
    and the one-element tuple that `--config.data.domains=(a,b)` produces
    without quotes.
    """
    items = [value] if isinstance(value, str) else list(value)
    names = []
    for item in items:
        for name in str(item).strip("()[] ").split(","):
            name = name.strip().strip("'\"")
            if name:
                names.append(name)
    return names
