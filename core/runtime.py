"""Process-level compute settings."""

from __future__ import annotations

import os
from contextlib import contextmanager

#: Below this size a model's matrices are too small for intra-op threads to pay off.
SMALL_CPU_MODEL_PARAMETERS = 50_000_000


@contextmanager
def cpu_threads_for(model):
    """Run a small model on one CPU thread (unless OMP_NUM_THREADS says otherwise),
    restoring the previous setting afterwards.

    Small matrix products do not pay for thread synchronization, and on a shared
    machine spinning OpenMP threads collapse. Measured on the 2-core CI machine with the
    ~0.85M-parameter demo model: a 32x24-token training step ran at 9.5k tokens/s on one
    thread and 0.3k tokens/s on two while another process used the second core; the
    demo evaluation took 8 s on one thread and 220 s on two.
    """
    import torch

    first = next(model.parameters(), None)
    small_cpu = (
        first is not None
        and first.device.type == "cpu"
        and "OMP_NUM_THREADS" not in os.environ
        and sum(p.numel() for p in model.parameters()) < SMALL_CPU_MODEL_PARAMETERS
    )
    previous = torch.get_num_threads()
    if small_cpu:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def quiet_transformers() -> None:
    """No per-file tqdm bars from transformers: our CLI draws its own progress, and
    worker logs should not fill with bars."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def default_device() -> str:
    """Where a job's models live: the (first) GPU when there is one; in a job of several
    processes, this process's GPU (``LOCAL_RANK``)."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{os.environ['LOCAL_RANK']}" if "LOCAL_RANK" in os.environ else "cuda"
