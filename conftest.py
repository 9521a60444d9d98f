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

NBVAL_OUTPUT_WAIT_S = 60
"""How long nbval waits for each next output message of a cell that has finished (its
default, 5 s, is fixed in nbval). Notebook 06's pipeline cell sends thousands of progress-bar
updates; with the other worker busy, draining them once left a gap over 5 s and failed a
cell that had run correctly."""


def pytest_collection_modifyitems(items):
    for item in items:
        if hasattr(item, "output_timeout"):  # nbval's notebook cells
            item.output_timeout = NBVAL_OUTPUT_WAIT_S
