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


def test_play_command_json_is_the_models_json() -> None:
    from pathlib import Path

    from devices.base import PlayRequest
    from devices.speakers.ip_speaker import play_command_json
    from protocol.models import DeviceCommand

    url = "http://10.0.0.1:8088/media/" + "a" * 64
    req = PlayRequest(broadcast_id="bc-1", media_path=Path("/tmp/x"), media_url=url, sha256="a" * 64,
                      duration_ms=61_000, start_at_ms=1_764_680_000_400, volume=70, priority=9,
                      repeat=2)
    built = play_command_json("c" * 32, 1_764_680_000_000, req)
    model = DeviceCommand(id="c" * 32, op="play", ts=1_764_680_000_000, broadcast_id="bc-1", url=req.media_url,
                          sha256=req.sha256, start_at=req.start_at_ms, volume=70, priority=9, duration_ms=61_000,
                          repeat=2)
    assert built == model.model_dump_json(exclude_none=True)
