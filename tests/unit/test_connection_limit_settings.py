"""How many connections a serving process holds (MAX_CONNECTIONS), and the settings that bound
a connection: 0 derives the cap from the open-file limit, keeping a quarter for the rest; an
idle one is kept for KEEP_ALIVE_TIMEOUT_S."""

from __future__ import annotations

import resource

import httpx
import pytest
from pydantic import ValidationError

from service.api.protocol import MIN_CONNECTIONS, ConnectionLimits, connection_limit
from service.commands.serve import uvicorn_options
from service.settings import Settings


def test_an_explicit_cap_is_used_as_given():
    assert connection_limit(16, open_files=256) == 16
    assert connection_limit(5000, open_files=256) == 5000


def test_zero_keeps_a_quarter_of_the_open_file_limit_for_files_and_services():
    assert connection_limit(0, open_files=256) == 192
    assert connection_limit(0, open_files=1024) == 768
    assert connection_limit(0, open_files=1_048_576) == 786_432


def test_a_derived_cap_is_never_below_the_minimum():
    assert connection_limit(0, open_files=64) == MIN_CONNECTIONS
    assert connection_limit(0, open_files=16) == MIN_CONNECTIONS


def test_an_unlimited_open_file_limit_still_gives_a_finite_cap():
    assert MIN_CONNECTIONS <= connection_limit(0, open_files=resource.RLIM_INFINITY) < 2**20


def test_zero_reads_this_process_s_open_file_limit():
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert connection_limit(0) == connection_limit(0, open_files=soft)


def test_a_negative_cap_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"0 \(derive from the open-file limit\) or positive"):
        connection_limit(-1)


def test_the_limits_come_from_the_settings():
    settings = Settings(header_timeout_s=2.5, max_header_bytes=8192, max_connections=0)
    limits = ConnectionLimits.from_settings(settings)
    assert limits == ConnectionLimits(2.5, 8192, connection_limit(0))


def test_the_defaults_are_ten_seconds_64_kib_and_derived():
    settings = Settings()
    assert (settings.header_timeout_s, settings.max_header_bytes, settings.max_connections) == (
        10.0, 64 * 1024, 0)


def test_idle_connections_are_kept_for_keep_alive_timeout():
    assert uvicorn_options(Settings(keep_alive_timeout_s=12.5))["timeout_keep_alive"] == 12.5


def test_by_default_clients_and_proxies_close_an_idle_connection_before_the_server():
    # httpx's own expiry; 60 s: nginx's upstream keepalive_timeout, an AWS load balancer's idle
    # timeout (docs/hardening.md#idle-connections-keep-alive)
    client_side = max(httpx.Limits().keepalive_expiry or 0, 60)
    assert Settings().keep_alive_timeout_s > client_side


@pytest.mark.parametrize("field, value", [
    ("header_timeout_s", 0), ("max_header_bytes", 100), ("max_connections", -1),
    ("keep_alive_timeout_s", 0),
])
def test_settings_refuse_limits_that_would_break_serving(field: str, value: float):
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})
