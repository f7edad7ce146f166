"""TimeDP benchmark sized for a 2-core CPU: L = 24, a small UNet, T = 50, two seeds.

    launch/reproduce_timedp.sh configs/timedp_cpu.py runs/timedp_cpu

or, with the data already prepared under data/:

    python -m timecraft_jax.benchmark --config configs/timedp_cpu.py --workdir runs/timedp_cpu

Per seed it trains the prompted and the unconditional model for 2,000 steps each and generates
500 samples per training domain and model and 500 per unseen domain, k and model.

Estimated time for both seeds: about 35 minutes on 2 x86 cores that other jobs share (load
average about 4), so under an hour with headroom. The estimate comes from a 5.8-minute sizing run
of this config with 300 steps and one round (jax 0.10.2). It trained at 7.5 steps/s at batch 64,
spent about 40 s per model on data loading and compilation, and took 5 s per sampler call of 250
samples x 50 steps. Per seed that gives about 10 min of training and 6 min of sampling.
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
    config.model.attention_resolutions = (2,)
    config.model.num_heads = 4
    config.model.context_dim = 16

    # Fewer diffusion steps than the reference's 200. The larger beta_T keeps alpha_bar_T near the
    # reference's (3.2e-4 here, 6.0e-4 at T = 200, beta_T = 0.1), so x_T is still close to pure noise.
    config.diffusion.num_timesteps = 50
    config.diffusion.linear_end = 0.4

    config.training.num_steps = 2000
    config.training.log_every = 100
    config.training.eval_every = 500
    config.training.eval_batches = 4
    config.training.checkpoint_every = 500
    config.optimizer.warmup_steps = 200
    config.sampling.batch_size = 250

    config.benchmark.seeds = (0, 1)
    config.benchmark.num_prompts = 50
    config.benchmark.repeats = 5
    config.benchmark.rounds = 2
    config.benchmark.num_test = 500
    return config
