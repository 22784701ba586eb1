"""Settings that only work together are refused together, at start, with the fix: never a
service that starts and then refuses every request of some kind."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_a_batch_larger_than_the_inference_queue_is_refused_at_start_with_the_fix():
    with pytest.raises(ValidationError, match="lower BATCH_MAX_ITEMS or raise MAX_QUEUE_SIZE"):
        Settings(_env_file=None, batch_max_items=300, max_queue_size=256)  # type: ignore[call-arg]
    assert Settings(_env_file=None, batch_max_items=256, max_queue_size=256)  # type: ignore[call-arg]
