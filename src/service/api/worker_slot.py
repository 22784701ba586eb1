"""Which GPU each of ``lab2prod serve --workers N``'s processes serves on.

uvicorn starts the N processes itself and gives them no index, so each one claims a *slot*: the
first of N lock files (``flock``, in a folder named after the supervising process) that no other
process holds. Slot i serves on ``cuda:{i mod gpus}``, as ``lab2prod worker``'s process i does.
The kernel releases a process's lock when it exits, however it exits, so the process uvicorn
starts in place of one that died takes that one's slot, and its GPU, back.

Only where it matters: DEVICE=auto or cuda on a machine with two GPUs or more. A named device,
the CPU or one GPU leaves the settings as they are and claims nothing.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from pathlib import Path
from typing import IO

from fastapi import FastAPI

from service.ml.device import cuda_device_count, device_for_process, goes_round_gpus
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)

_held: list[IO[str]] = []  # the claimed slot's lock, open for the life of the process


def slot_directory(supervisor_pid: int) -> Path:
    """Where the slots of the ``lab2prod serve`` process ``supervisor_pid`` lie."""
    return Path(tempfile.gettempdir()) / f"lab2prod-serve-{supervisor_pid}-slots"


def claim_slot(directory: Path, slots: int) -> tuple[int, IO[str]] | None:
    """The lowest of ``slots`` slots in ``directory`` no other open lock holds, with its lock
    (the slot is held while the returned file stays open); None when every slot is held."""
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(slots):
        handle = (directory / f"{index}.lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return index, handle
    return None


def worker_settings(settings: Settings, gpus: int,
                    directory: Path) -> tuple[Settings, IO[str] | None]:
    """``settings`` for one of ``settings.workers`` processes: on its own GPU where there are
    several and DEVICE lets it choose (a slot claimed in ``directory``, held while the returned
    lock stays open), else unchanged (and no lock)."""
    if device_for_process(settings.device, 0, gpus) is None:
        return settings, None
    claimed = claim_slot(directory, settings.workers)
    if claimed is None:  # more processes than --workers: uvicorn never starts them
        log.warning("every one of the %d worker slots in %s is held; this process keeps "
                    "DEVICE=%s", settings.workers, directory, settings.device)
        return settings, None
    index, lock = claimed
    device = device_for_process(settings.device, index, gpus)
    log.info("worker process %d of %d serves on %s", index + 1, settings.workers, device)
    return settings.model_copy(update={"device": device}), lock


def create_worker_app() -> FastAPI:
    """The app of one ``lab2prod serve --workers N`` process (uvicorn's factory)."""
    from service.api.app import create_app

    settings = get_settings()
    gpus = cuda_device_count() if goes_round_gpus(settings.device) else 0
    settings, lock = worker_settings(settings, gpus, slot_directory(os.getppid()))
    if lock is not None:
        _held.append(lock)
    return create_app(settings)
