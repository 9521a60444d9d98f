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


def pytest_configure(config):
    """One baseline cache (``FTLAB_CACHE``, see ftlab.pipeline.baseline) for the whole test
    session, shared by both workers and every process they start, and empty at its start: a
    run measures each base model and eval section once, and no figure comes from an earlier
    session or from the user's own cache."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # the controller: workers inherit it
        import tempfile

        config._ftlab_cache = tempfile.TemporaryDirectory(prefix="ftlab-test-cache-")
        os.environ["FTLAB_CACHE"] = config._ftlab_cache.name


def pytest_unconfigure(config):
    cache = getattr(config, "_ftlab_cache", None)
    if cache is not None:
        cache.cleanup()


NBVAL_OUTPUT_WAIT_S = 60
"""How long nbval waits for each next output message of a cell that has finished (its
default, 5 s, is fixed in nbval). Notebook 06's pipeline cell sends thousands of progress-bar
updates; with the other worker busy, draining them once left a gap over 5 s and failed a
cell that had run correctly."""


LONGEST_FIRST = ("tests/test_course_reference.py", "tests/test_learner_path.py",
                 "tests/test_run_contract.py", "tests/test_pipeline.py",
                 "tests/test_distributed.py", "notebooks/08_rl_grpo.ipynb",
                 "notebooks/07_scale_out.ipynb", "notebooks/04_training_loop.ipynb")
"""The files that take longest (``--durations``, 2 cores), collected first. pytest-xdist's
``--dist loadfile`` hands files to its workers in collection order; when a long file comes
last, one worker runs it while the other has nothing left to do. Longest first, the short
files even the two workers out at the end. Only the order changes: a stale list costs time,
never a test."""


def _rank(item) -> int:
    path = item.nodeid.split("::", 1)[0]
    return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(items):
    for item in items:
        if hasattr(item, "output_timeout"):  # nbval's notebook cells
            item.output_timeout = NBVAL_OUTPUT_WAIT_S
    items.sort(key=_rank)  # stable: the order inside a file, and of the other files, is kept
