"""Workers that own their GPUs: each child process is pinned to one slot of devices.

``obliviate worker --gpus 0,1,2,3 --gpus-per-job 2`` makes two slots, ``0,1`` and
``2,3``, runs two child processes (one job each at a time) and listens on the queue of
2-GPU jobs. Each child sets ``CUDA_VISIBLE_DEVICES`` to its slot as it starts, before
anything in it imports torch (tasks import it when a job starts), so CUDA in that child
only ever sees its own devices (as ``cuda:0``, ``cuda:1``, ...). Prefork keeps a child's
pool index when it replaces a child (``max_tasks_per_child=1`` replaces one after every
job), so slot ``index`` always belongs to exactly one live child.
"""

from __future__ import annotations

import os
import socket

from billiard.process import current_process

from core.settings import Settings, get_settings

VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"


def check_concurrency(settings: Settings, concurrency: int) -> None:
    """In the parent: one child per slot, or two children would share a slot."""
    slots = settings.worker_gpu_slots
    if slots and concurrency != len(slots):
        raise RuntimeError(
            f"{len(slots)} GPU slot(s) ({_describe(slots)}) need --concurrency {len(slots)}, "
            f"got {concurrency}; `obliviate worker --gpus ...` sets it"
        )


def pin_to_slot(settings: Settings | None = None, index: int | None = None) -> list[str] | None:
    """In a child, before it runs anything: restrict CUDA to this child's slot. Returns
    the slot's devices (None when the worker owns no particular GPUs)."""
    settings = settings or get_settings()
    slots = settings.worker_gpu_slots
    if not slots:
        return None
    index = current_process().index if index is None else index
    devices = slots[index]
    os.environ[VISIBLE_DEVICES] = ",".join(devices)
    # Index the devices as nvidia-smi does, not fastest-first as CUDA does by default.
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    return devices


def worker_identity() -> str:
    """``host:pid``, plus the devices when this process is pinned: what the job's
    ``worker_id`` and its "started on" event show."""
    identity = f"{socket.gethostname()}:{os.getpid()}"
    pinned = os.environ.get(VISIBLE_DEVICES)
    return f"{identity}/gpus={pinned}" if pinned and get_settings().worker_gpus else identity


def _describe(slots: list[list[str]]) -> str:
    return " ".join(",".join(slot) for slot in slots)
