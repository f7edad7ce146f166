"""TimeDP multi-domain setup of the reference: L = 96, 16 prototypes, T = 200.

Paper-sized run for an accelerator (about 22M UNet parameters, 50k steps at
batch 128). Run it with:

    python -m timecraft_jax.train --config configs/timedp.py --workdir runs/timedp

The full benchmark (prompted and unconditional model, in-domain and k-shot unseen-domain
metrics, report) with three seeds:

    launch/reproduce_timedp.sh configs/timedp.py runs/timedp --seeds 0,1,2

Per seed that is 2 x 50k training steps at batch 128 and 2 x (12 x 5,000 + 2 x 3 x 2,000) =
144,000 samples of 200 ancestral DDPM steps. Expected time on one H100/H200-class GPU, an
estimate that no run has checked yet: a train step is about 0.4 TFLOP (3 x 1.07 GFLOP x 128),
so at 10-20 TFLOP/s achieved float32 throughput 50k steps take 17-33 minutes per model, and the
144,000 x 200 forward passes (about 31 PFLOP) take 26-52 minutes: roughly 1-2 hours per seed.
"""

from timecraft_jax.config_lib import base_config


def get_config():
    return base_config()
