"""Which version answers a request: a pinned one, else the traffic policy, else MODEL_ALIAS.

- *Pinned*: ``X-Model-Version: v3`` (or ``?version=v3``; an alias such as ``candidate`` too).
- *Canary*: ``CANARY_PERCENT`` of the rest goes to ``CANARY_ALIAS``. With ``X-Client-Id`` the
  choice is sticky: a hash of the id puts each client in a fixed bucket of 0-100, so the same id
  always gets the same version (until the percentage changes); without it, each request draws.
- *Shadow*: ``SHADOW_PERCENT`` of unpinned requests are also sent to ``SHADOW_ALIAS`` off the
  response path, to compare its answer with the served one (``api.shadow``).

The policy is one frozen object replaced whole (``PUT /admin/traffic``), so a request sees either
the old policy or the new one, never half of each.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass

from service.registry import RegistryError, check_alias
from service.settings import Settings

PINNED, CANARY, DEFAULT = "pinned", "canary", "default"


@dataclass(frozen=True)
class TrafficPolicy:
    canary_alias: str | None = None
    canary_percent: float = 0.0
    shadow_alias: str | None = None
    shadow_percent: float = 0.0

    def __post_init__(self) -> None:
        for role in ("canary", "shadow"):
            alias, percent = getattr(self, f"{role}_alias"), getattr(self, f"{role}_percent")
            if not 0.0 <= percent <= 100.0:
                raise ValueError(f"{role}_percent must be between 0 and 100, got {percent}")
            if percent > 0 and not alias:
                raise ValueError(f"{role}_percent is {percent:g} but no {role}_alias is set: "
                                 f"name the alias whose version takes that share")
            if alias:
                try:
                    check_alias(alias)
                except RegistryError as exc:
                    raise ValueError(f"{role}_alias: {exc}") from None

    @classmethod
    def from_settings(cls, settings: Settings) -> TrafficPolicy:
        return cls(settings.canary_alias, settings.canary_percent, settings.shadow_alias,
                   settings.shadow_percent)

    @property
    def active(self) -> bool:
        """Whether any unpinned request goes anywhere but the default alias."""
        return bool(self.canary_percent or self.shadow_percent)

    def aliases(self) -> set[str]:
        """The aliases this policy sends traffic to (the pool keeps their versions loaded)."""
        return {alias for alias, percent in ((self.canary_alias, self.canary_percent),
                                             (self.shadow_alias, self.shadow_percent))
                if alias and percent > 0}

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Route:
    ref: str  # the alias or version that answers
    reason: str  # pinned, canary or default
    shadow: str | None = None  # an alias that also gets a copy, off the response path


class Router:
    def __init__(
        self, default_alias: str, policy: TrafficPolicy,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.default_alias = default_alias
        self.policy = policy
        self._draw = draw
        self.default_route = Route(default_alias, DEFAULT)

    def route(
        self, pinned: str | None, client_id: str | None,
        serving: Callable[[str], bool] = lambda alias: True,
    ) -> Route:
        """The route for one request; ``serving(alias)`` says whether an alias's version is
        loaded (a canary or shadow that is not gets no traffic)."""
        if pinned:
            return Route(pinned, PINNED)
        policy = self.policy
        if not policy.active:
            return self.default_route
        ref, reason = self.default_alias, DEFAULT
        if policy.canary_percent and policy.canary_alias and serving(policy.canary_alias) \
                and self._bucket(client_id, "canary") < policy.canary_percent:
            ref, reason = policy.canary_alias, CANARY
        shadow = None
        if policy.shadow_percent and policy.shadow_alias and serving(policy.shadow_alias) \
                and self._bucket(client_id, "shadow") < policy.shadow_percent:
            shadow = policy.shadow_alias
        return Route(ref, reason, shadow)

    def _bucket(self, client_id: str | None, salt: str) -> float:
        """0 <= x < 100: fixed per client id (and role), random without one."""
        if not client_id:
            return self._draw() * 100.0
        digest = hashlib.blake2b(f"{salt}:{client_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % 10_000 / 100.0
