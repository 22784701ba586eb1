"""Which GPU each of ``lab2prod serve --workers N``'s processes serves on.

uvicorn starts the N processes itself and gives them no index, so each one claims a *slot*: the
lowest-numbered lock file (``flock``, in a folder named after the supervising process) that no
other process holds. Slot i serves on ``cuda:{i mod gpus}``, as ``lab2prod worker``'s process i
does. The kernel releases a process's lock when it exits, however it exits, so the process uvicorn
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


def claim_slot(directory: Path) -> tuple[int, IO[str]]:
    """The lowest slot in ``directory`` that no other open lock holds, and its lock: the slot
    is held while the returned file stays open. (Not bounded by the number of processes, which
    a worker process does not know: uvicorn's --workers is the supervisor's.)"""
    directory.mkdir(parents=True, exist_ok=True)
    index = 0
    while True:
        handle = (directory / f"{index}.lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            index += 1
            continue
        return index, handle


def worker_settings(settings: Settings, gpus: int,
                    directory: Path) -> tuple[Settings, IO[str] | None]:
    """``settings`` for one of several serving processes: on its own GPU where there are
    several and DEVICE lets it choose (a slot claimed in ``directory``, held while the returned
    lock stays open), else unchanged (and no lock)."""
    if device_for_process(settings.device, 0, gpus) is None:
        return settings, None
    index, lock = claim_slot(directory)
    return settings.model_copy(update={"device": device_for_process(settings.device, index,
                                                                      gpus)}), lock


def create_worker_app() -> FastAPI:
    """The app of one ``lab2prod serve --workers N`` process (uvicorn's factory)."""
    from service.api.app import create_app

    settings = get_settings()
    gpus = cuda_device_count() if goes_round_gpus(settings.device) else 0
    settings, lock = worker_settings(settings, gpus, slot_directory(os.getppid()))
    app = create_app(settings)  # configures logging
    if lock is not None:
        _held.append(lock)
        log.info("this worker process serves on %s (one of %d GPUs, slot %s)", settings.device,
                 gpus, Path(lock.name).stem)
    return app
