"""The gateway's playback reports, built without pydantic, are what the model would have written."""

from __future__ import annotations

import pytest

from gateway.broadcast.executor import playback_json
from protocol.models import PlaybackEvent


@pytest.mark.parametrize(("state", "reason", "scheduled_at"), [
    ("started", None, 1_764_680_000_400),
    ("finished", None, None),
    ("failed", "device_refused: không đủ bộ nhớ \"quote\" \\ /", 1_764_680_000_400),
    ("skipped", "missed_start", None),
])
def test_playback_json_is_the_models_json(state: str, reason: str | None, scheduled_at: int | None) -> None:
    args = {"broadcast_id": "bc-2026-12-02-01", "device": "loa-cho", "state": state, "at": 1_764_680_000_123,
            "reason": reason, "scheduled_at": scheduled_at}
    built = playback_json(**args)  # type: ignore[arg-type]
    assert built == PlaybackEvent(**args).model_dump_json(exclude_none=True)  # type: ignore[arg-type]
    assert PlaybackEvent.model_validate_json(built).model_dump(exclude_none=True) == {
        "kind": "playback", **{k: v for k, v in args.items() if v is not None}}
