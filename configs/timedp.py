"""TimeDP multi-domain setup of the reference: L = 96, 16 prototypes, T = 200.

Paper-sized run for an accelerator (about 22M UNet parameters, 50k steps at
batch 128). Run it with:

    python -m timecraft_jax.train --config configs/timedp.py --workdir runs/timedp

The full benchmark (prompted and unconditional model, in-domain and k-shot unseen-domain
metrics, report) with three seeds:

    launch/reproduce_timedp.sh configs/timedp.py runs/timedp --seeds 0,1,2

Per seed that is 2 x 50k training steps at batch 128 and 2 x (12 x 5,000 + 2 x 3 x 2,000) =
144,000 samples of 200 ancestral DDPM steps. Expected time on one GPU: not yet measured.
"""

from timecraft_jax.config_lib import base_config


def get_config():
    return base_config()
