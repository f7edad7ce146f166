"""TimeDP multi-domain setup of the reference: L = 96, 16 prototypes, T = 200.

Paper-sized run for an accelerator (about 22M UNet parameters, 50k steps at
batch 128). Run it with:

    python -m timecraft_jax.train --config configs/timedp.py --workdir runs/timedp
"""

from timecraft_jax.config_lib import base_config


def get_config():
    return base_config()
