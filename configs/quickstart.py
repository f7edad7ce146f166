"""Small multi-domain model and budget that trains on a 2-core CPU in minutes.

    python -m timecraft_jax.train --config configs/quickstart.py --workdir runs/quickstart
"""

from timecraft_jax.config_lib import base_config


def get_config():
    config = base_config()
    config.data.seq_len = 24
    config.data.batch_size = 64
    config.data.max_windows_per_domain = 2000
    config.model.model_channels = 32
    config.model.channel_mult = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = (1, 2)
    config.model.num_heads = 4
    config.model.context_dim = 16
    config.training.num_steps = 2000
    config.training.log_every = 100
    config.training.eval_every = 500
    config.training.eval_batches = 4
    config.training.checkpoint_every = 500
    config.optimizer.warmup_steps = 200
    config.sampling.batch_size = 500
    # DDIM with 50 of the 200 steps keeps sampling 12 domains to about a minute on CPU.
    config.sampling.sampler = "ddim"
    config.sampling.num_steps = 50
    return config
