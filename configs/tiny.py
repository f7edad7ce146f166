"""Smallest working model, for tests: three domains, L = 24, a few steps.

    python -m timecraft_jax.train --config configs/tiny.py --workdir runs/tiny
"""

from timecraft_jax.config_lib import base_config


def get_config():
    config = base_config()
    config.data.domains = ("electricity", "exchange", "nn5")
    config.data.seq_len = 24
    config.data.batch_size = 8
    config.data.max_windows_per_domain = 200
    config.model.model_channels = 32
    config.model.channel_mult = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = (2,)
    config.model.num_heads = 4
    config.model.context_dim = 16
    config.model.num_prototypes = 8
    config.diffusion.num_timesteps = 50
    config.training.num_steps = 6
    config.training.log_every = 2
    config.training.eval_every = 3
    config.training.eval_batches = 1
    config.training.checkpoint_every = 3
    config.optimizer.warmup_steps = 2
    config.sampling.batch_size = 16
    return config
