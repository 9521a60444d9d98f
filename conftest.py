"""Whole-session settings of the maintainer test run (not shipped to learners).

Under pytest-xdist (``-n 2``, the README's test command) two workers share the machine's
cores: each worker, and every process it starts (notebook kernels, training children,
``course verify``'s runs), uses one thread, so the two never oversubscribe the CPU.
"""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"
    import torch

    torch.set_num_threads(1)
