"""Failure drills anyone can rerun (`lab2prod drill`): each starts the services it needs on
127.0.0.1, applies bounded load, injects one failure and reports what it saw against what it
expected. One module per drill, each defining ``DRILL``; found by name through ``DRILLS``."""

from __future__ import annotations

import importlib

from service.drills.runner import Drill

# drill name -> the module that defines it (imported only when run)
DRILLS: dict[str, str] = {
    "rabbitmq-outage": "service.drills.rabbitmq_outage",
    "redis-kill": "service.drills.redis_kill",
    "redis-freeze": "service.drills.redis_freeze",
    "version-repair": "service.drills.version_repair",
    "slow-headers": "service.drills.slow_headers",
    "big-header": "service.drills.big_header",
    "sigterm-drain": "service.drills.sigterm_drain",
}


def get_drill(name: str) -> Drill:
    if name not in DRILLS:
        raise KeyError(f"no drill {name!r}; the drills are: {', '.join(DRILLS)}")
    drill: Drill = importlib.import_module(DRILLS[name]).DRILL
    return drill
