"""Which version answers a request: pinned, else the traffic policy, else the default alias."""

from __future__ import annotations

import itertools

import pytest

from service.inference.router import CANARY, DEFAULT, PINNED, Route, Router, TrafficPolicy

CANARY_20 = TrafficPolicy(canary_alias="candidate", canary_percent=20)


def test_a_pin_wins_over_any_policy():
    router = Router("production", TrafficPolicy("candidate", 100, "shadow", 100))
    assert router.route("v3", "client-1") == Route("v3", PINNED)


def test_without_a_policy_every_unpinned_request_goes_to_the_default_alias():
    router = Router("production", TrafficPolicy())
    assert not router.policy.active
    assert router.route(None, "client-1") == router.default_route == Route("production", DEFAULT)


def test_the_canary_takes_requests_whose_draw_falls_under_its_percentage():
    draws = itertools.cycle([0.05, 0.19, 0.21, 0.9])
    router = Router("production", CANARY_20, draw=lambda: next(draws))
    assert [router.route(None, None).reason for _ in range(4)] == [CANARY, CANARY, DEFAULT,
                                                                   DEFAULT]


def test_a_client_id_lands_in_the_same_bucket_every_time_and_the_buckets_share_fairly():
    router = Router("production", CANARY_20, draw=lambda: pytest.fail("no draw with an id"))
    first = [router.route(None, f"user-{n}").ref for n in range(2000)]
    again = [router.route(None, f"user-{n}").ref for n in range(2000)]
    assert first == again
    assert abs(first.count("candidate") / 2000 - 0.20) <= 0.03


def test_a_canary_whose_version_is_not_loaded_gets_no_traffic():
    router = Router("production", TrafficPolicy("candidate", 100))
    assert router.route(None, None, serving=lambda alias: False).ref == "production"


def test_shadowing_is_drawn_apart_from_the_canary():
    router = Router("production", TrafficPolicy("candidate", 50, "previous", 50))
    routes = [router.route(None, f"user-{n}") for n in range(1000)]
    both = sum(r.reason == CANARY and r.shadow == "previous" for r in routes)
    assert 150 <= both <= 350  # independent halves: about a quarter


@pytest.mark.parametrize(("policy", "message"), [
    ({"canary_percent": 10}, "no canary_alias is set"),
    ({"shadow_alias": "x", "shadow_percent": 101}, "between 0 and 100"),
])
def test_a_policy_that_cannot_work_is_refused_with_why(policy, message):
    with pytest.raises(ValueError, match=message):
        TrafficPolicy(**policy)


def test_an_alias_that_could_be_a_version_is_refused():
    with pytest.raises(ValueError, match=r"canary_alias: .*not of the form v<N>"):
        TrafficPolicy(canary_alias="v3", canary_percent=5)
