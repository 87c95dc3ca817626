"""The gateway's own amplifier: a relay on a GPIO pin powers it, ffmpeg plays into the sound card.

Sequence for one broadcast: the relay closes ``warmup_s`` before the start (an amplifier needs a
moment before it is quiet and stable), ffmpeg starts at ``start_at`` and plays the cached file at the
requested volume (``-af volume=…``; ``repeat`` passes with ``-stream_loop``), ``started`` is reported
when ffmpeg has been launched and ``finished`` when it exits cleanly. The relay stays closed for
``cooldown_s`` after the end (so back-to-back bulletins do not click the amplifier on and off), then
opens. A new start while something plays replaces it (the executor has already decided priorities);
the old one is reported with the state the executor asked for.

Off the Pi (tests, the demo) set ``gpio: mock`` to use gpiozero's MockFactory pins, and ``output:
null`` or ``output: "file:/tmp/out.wav"``: ffmpeg still decodes and paces the audio in real time.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from pydantic import Field

from devices.base import PlaybackReport, PlayRequest, SpeakerDriver
from loaxa.clock import now_ms
from loaxa.yamlconf import StrictModel
from protocol.ids import DeviceId
from protocol.models import PlaybackState

log = logging.getLogger(__name__)


class AmplifierConfig(StrictModel):
    """The amplifier wired to the gateway itself (relay on a GPIO pin, audio out of the Pi)."""

    # same fields as devices.config.DeviceBase (not imported, to keep devices.config free of cycles)
    id: DeviceId
    name: str | None = Field(default=None, max_length=200, description="human name, e.g. 'Loa trung tâm'")
    type: Literal["amplifier"]
    relay_pin: int | str = Field(default=17, description="GPIO of the amplifier power relay (BCM number or 'GPIO17')")
    relay_active_high: bool = True
    gpio: Literal["auto", "mock"] = Field(default="auto", description="mock: gpiozero MockFactory (no real pins)")
    warmup_s: float = Field(default=2.0, ge=0, le=60, description="relay on this long before the start")
    cooldown_s: float = Field(default=30.0, ge=0, le=3600, description="relay stays on this long after the end")
    output: str = Field(default="alsa:default", pattern=r"^(alsa:.+|pulse:.+|null|file:.+)$", description=(
        "where sound goes: alsa:DEVICE, pulse:DEVICE, null (decode only) or file:PATH (e.g. a .wav)"))
    volume: int = Field(default=70, ge=0, le=100, description="volume for device.set when none is given")
    ffmpeg: str = Field(default="ffmpeg", description="ffmpeg binary")


def ffmpeg_argv(cfg: AmplifierConfig, req: PlayRequest) -> list[str]:
    """The ffmpeg command line that plays ``req`` into ``cfg.output``."""
    gain = (req.volume / 100.0) ** 2  # perceived loudness is roughly quadratic in the slider
    argv = [cfg.ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-re"]
    if req.repeat > 1:
        argv += ["-stream_loop", str(req.repeat - 1)]
    argv += ["-i", str(req.media_path), "-af", f"volume={gain:.4f}"]
    kind, _, target = cfg.output.partition(":")
    if kind == "alsa":
        argv += ["-f", "alsa", target]
    elif kind == "pulse":
        argv += ["-f", "pulse", target]
    elif kind == "null":
        argv += ["-f", "null", "-"]
    else:
        argv += ["-y", target]
    return argv


class _Job:
    def __init__(self, req: PlayRequest) -> None:
        self.req = req
        self.task: asyncio.Task[None] | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.stopped: tuple[PlaybackState, str | None] | None = None


class Amplifier(SpeakerDriver):
    def __init__(self, cfg: AmplifierConfig, *, pin_factory: Any = None) -> None:
        self.cfg = cfg
        self.device_id = cfg.id
        self.volume = cfg.volume
        self._pin_factory = pin_factory
        self._relay: Any = None
        self._report: PlaybackReport | None = None
        self._jobs: dict[str, _Job] = {}
        self._current: _Job | None = None
        self._cooldown: asyncio.Task[None] | None = None
        self.manual_power: bool | None = None

    async def start(self, report: PlaybackReport) -> None:
        from gpiozero import OutputDevice

        factory = self._pin_factory
        if factory is None and self.cfg.gpio == "mock":
            from gpiozero.pins.mock import MockFactory

            factory = MockFactory()
        self._relay = OutputDevice(self.cfg.relay_pin, active_high=self.cfg.relay_active_high, initial_value=False,
                                   pin_factory=factory)
        self._report = report
        self.online = True

    async def close(self) -> None:
        for job in list(self._jobs.values()):
            await self._kill(job)
        if self._relay is not None:
            self._relay.off()
            self._relay.close()
        self.online = False

    @property
    def relay_on(self) -> bool:
        return bool(self._relay is not None and self._relay.value)

    async def _emit(self, bid: str, state: PlaybackState, reason: str | None = None) -> None:
        if self._report is not None:
            await self._report(self.device_id, bid, state, now_ms(), reason)

    async def play(self, req: PlayRequest) -> None:
        if req.broadcast_id in self._jobs:
            return
        job = _Job(req)
        self._jobs[req.broadcast_id] = job
        job.task = asyncio.create_task(self._run(job), name=f"amp-{req.broadcast_id}")

    async def _run(self, job: _Job) -> None:
        req = job.req
        bid = req.broadcast_id
        try:
            await _sleep_until(req.start_at_ms - int(self.cfg.warmup_s * 1000))
            self._power(True)
            await _sleep_until(req.start_at_ms)
            if job.stopped is not None:
                return
            cur = self._current
            if cur is not None and cur is not job:
                await self._end(cur, "preempted", f"preempted by {bid}")
            self._current = job
            job.proc = await asyncio.create_subprocess_exec(
                *ffmpeg_argv(self.cfg, req), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            await self._emit(bid, "started")
            _, err = await job.proc.communicate()
            if job.stopped is not None:
                return
            if job.proc.returncode == 0:
                await self._emit(bid, "finished")
            else:
                tail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
                await self._emit(bid, "failed", f"ffmpeg exit {job.proc.returncode}: {tail[0]}"[:200])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("amplifier %s: playback of %s failed", self.device_id, bid)
            await self._emit(bid, "failed", f"playback_error: {exc}"[:200])
        finally:
            self._jobs.pop(bid, None)
            if self._current is job:
                self._current = None
                self._schedule_cooldown()

    def _power(self, on: bool) -> None:
        if self._cooldown is not None:
            self._cooldown.cancel()
            self._cooldown = None
        if self._relay is not None:
            self._relay.value = on

    def _schedule_cooldown(self) -> None:
        if self._jobs or self.manual_power:
            return

        async def off() -> None:
            await asyncio.sleep(self.cfg.cooldown_s)
            if not self._jobs and not self.manual_power and self._relay is not None:
                self._relay.off()

        self._cooldown = asyncio.create_task(off())

    async def _kill(self, job: _Job) -> None:
        if job.proc is not None and job.proc.returncode is None:
            job.proc.terminate()
            try:
                await asyncio.wait_for(job.proc.wait(), 2)
            except TimeoutError:
                job.proc.kill()
                await job.proc.wait()
        if job.task is not None and job.proc is None:
            job.task.cancel()

    async def _end(self, job: _Job, state: PlaybackState, reason: str | None) -> None:
        if job.stopped is not None:
            return
        job.stopped = (state, reason)
        await self._kill(job)
        await self._emit(job.req.broadcast_id, state, reason)
        self._jobs.pop(job.req.broadcast_id, None)
        if self._current is job:
            self._current = None
            self._schedule_cooldown()

    async def stop(self, broadcast_id: str, state: PlaybackState = "preempted", reason: str | None = None) -> None:
        job = self._jobs.get(broadcast_id)
        if job is not None:
            await self._end(job, state, reason)

    async def set(self, *, volume: int | None = None, power: bool | None = None) -> None:
        if volume is not None:
            self.volume = volume
        if power is not None:
            self.manual_power = power
            if power:
                self._power(True)
            elif not self._jobs:
                self._power(False)


async def _sleep_until(wall_ms: int) -> None:
    while True:
        left = wall_ms - now_ms()
        if left <= 0:
            return
        await asyncio.sleep(left / 1000 if left < 20 else (left - 10) / 1000)
