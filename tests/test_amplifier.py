"""The local amplifier driver: gpiozero relay (MockFactory pins) with warm-up and cool-down, and real
ffmpeg playback of the cached file at the requested volume into a WAV file sink."""

from __future__ import annotations

import asyncio
import hashlib
import struct
import time
import wave
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from devices.base import PlayRequest
from devices.config import DeviceConfig
from devices.speakers.amplifier import Amplifier, AmplifierConfig, ffmpeg_argv
from loaxa.clock import now_ms
from loaxa.yamlconf import StrictModel
from tests.broadcast_env import tone_wav


class Reports:
    def __init__(self) -> None:
        self.items: list[tuple[str, str, str, int, str | None]] = []

    async def __call__(self, dev: str, bid: str, state: Any, at: int, reason: str | None) -> None:
        self.items.append((dev, bid, state, at, reason))

    def of(self, bid: str) -> dict[str, tuple[int, str | None]]:
        return {s: (at, r) for _d, b, s, at, r in self.items if b == bid}


def _req(path: Path, bid: str, start: int, duration_ms: int, volume: int = 100, repeat: int = 1) -> PlayRequest:
    return PlayRequest(broadcast_id=bid, media_path=path, media_url="http://unused", sha256="0" * 64,
                       duration_ms=duration_ms, start_at_ms=start, volume=volume, priority=3, repeat=repeat)


def _peak(path: Path) -> tuple[int, float]:
    with wave.open(str(path)) as w:
        frames = w.readframes(w.getnframes())
        n = w.getnframes() / w.getframerate()
        width = w.getsampwidth()
    assert width == 2
    samples = struct.unpack(f"<{len(frames) // 2}h", frames)
    return max(abs(s) for s in samples), n


async def _wait(pred: Any, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_relay_warmup_playback_volume_and_cooldown(tmp_path: Path) -> None:
    src = tmp_path / "in.wav"
    src.write_bytes(tone_wav(1000))  # amplitude 8000
    out = tmp_path / "out.wav"
    cfg = AmplifierConfig(id="amp", type="amplifier", output=f"file:{out}", warmup_s=0.4, cooldown_s=0.5)
    amp = Amplifier(cfg, pin_factory=MockFactory())
    rep = Reports()
    await amp.start(rep)
    assert amp.relay_on is False
    start = now_ms() + 800
    await amp.play(_req(src, "b1", start, 1000, volume=50))
    await _wait(lambda: amp.relay_on, 2)
    relay_on_at = now_ms()
    assert start - relay_on_at >= 300  # warmed up ahead of the start
    await _wait(lambda: "finished" in rep.of("b1"), 6)
    started_at = rep.of("b1")["started"][0]
    assert abs(started_at - start) <= 60
    assert rep.of("b1")["finished"][0] - started_at >= 900  # -re: played in real time
    assert amp.relay_on is True  # cool-down keeps it on for a while
    await _wait(lambda: not amp.relay_on, 2)
    peak, seconds = _peak(out)
    assert abs(seconds - 1.0) < 0.05
    assert 1500 <= peak <= 2500, peak  # volume 50 → gain 0.25 on a tone of amplitude 8000
    await amp.close()


async def test_stop_preempts_and_bad_audio_fails(tmp_path: Path) -> None:
    src = tmp_path / "long.wav"
    src.write_bytes(tone_wav(5000))
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF" + hashlib.sha256(b"x").digest() * 10)
    cfg = AmplifierConfig(id="amp", type="amplifier", output="null", warmup_s=0, cooldown_s=0)
    amp = Amplifier(cfg, pin_factory=MockFactory())
    rep = Reports()
    await amp.start(rep)
    await amp.play(_req(src, "long", now_ms(), 5000))
    await _wait(lambda: "started" in rep.of("long"))
    await asyncio.sleep(0.3)
    await amp.stop("long", "preempted", "preempted by alarm")
    assert rep.of("long")["preempted"][1] == "preempted by alarm"
    assert "finished" not in rep.of("long")
    await amp.play(_req(junk, "junk", now_ms(), 1000))
    await _wait(lambda: "failed" in rep.of("junk"))
    assert rep.of("junk")["failed"][1].startswith("ffmpeg exit")
    await _wait(lambda: not amp.relay_on, 2)
    await amp.close()


def test_ffmpeg_command_line() -> None:
    cfg = AmplifierConfig(id="amp", type="amplifier", output="alsa:hw:0")
    argv = ffmpeg_argv(cfg, _req(Path("/m/abc"), "b", 0, 100, volume=100, repeat=3))
    assert argv[:1] == ["ffmpeg"] and "-re" in argv
    assert argv[argv.index("-stream_loop") + 1] == "2"
    assert argv[argv.index("-af") + 1] == "volume=1.0000"
    assert argv[-3:] == ["-f", "alsa", "hw:0"]


def test_amplifier_is_a_device_type() -> None:
    class Holder(StrictModel):
        devices: list[DeviceConfig]

    h = Holder.model_validate({"devices": [{"id": "amp-1", "type": "amplifier", "relay_pin": 27, "gpio": "mock"}]})
    assert isinstance(h.devices[0], AmplifierConfig) and h.devices[0].relay_pin == 27
    with pytest.raises(ValueError, match="output"):
        Holder.model_validate({"devices": [{"id": "amp-1", "type": "amplifier", "output": "speaker"}]})
