"""Remote actions: a signed command to one gateway, answered with the device's own report.

An action is sent once, now, with a short lifetime (``ttl_s``): a volume change or a ping that
arrives an hour later is worse than none, so unlike broadcast plans these are not stored and resent.
The answer waits (up to ``fleet.action_timeout_s``) for:

* the gateway's ack (refusals come back at once, with the gateway's reason);
* ``device.set``: each target's own state, relayed from the speaker, showing the new values;
* ``ping`` of devices: one ``device_report`` per device (answered or not, and the round trip);
* ``health.report``: a health report newer than the request;
* ``gateway.restart``: the gateway's ``online`` status after the restart.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any

from pydantic import BaseModel

from protocol.models import (
    DeviceSetBody,
    Envelope,
    GatewayRestartBody,
    HealthReportBody,
    PingBody,
)
from protocol.signing import Signer, now_ms
from protocol.topics import cmd_topic
from scheduler.fleet.state import DeviceView, FleetState

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 60


class ActionError(Exception):
    """The action cannot be sent (unknown gateway or device, link down); ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class FleetActions:
    def __init__(self, signer: Signer, state: FleetState, *, timeout_s: float = 15.0):
        self.signer = signer
        self.state = state
        self.timeout_s = timeout_s
        self.sent = 0
        self._takes_gw = "gw" in inspect.signature(signer.envelope).parameters

    def _envelope(self, gw: str, kind: str, body: BaseModel, ttl_s: int) -> Envelope:
        extra: dict[str, Any] = {"gw": gw} if self._takes_gw else {}  # envelopes name their gateway (wire v1.1)
        return self.signer.envelope(kind, body, ttl_ms=ttl_s * 1000, **extra)

    def _check(self, gw: str, devices: list[str] | None = None) -> list[DeviceView]:
        view = self.state.gateways.get(gw)
        if view is None:
            raise ActionError(f"no gateway {gw} at this scheduler", 404)
        if not self.state.connected:
            raise ActionError("the scheduler is not connected to the broker; try again shortly", 503)
        if self.state.gateway_status(view) != "online":
            raise ActionError(f"gateway {gw} is {self.state.gateway_status(view)}; an action needs it online", 409)
        if devices is None:
            return []
        missing = [d for d in devices if d not in view.devices]
        if missing:
            raise ActionError(f"no device {', '.join(missing)} on gateway {gw}", 404)
        return [view.devices[d] for d in devices]

    async def _send(self, gw: str, kind: str, body: BaseModel, ttl_s: int = DEFAULT_TTL_S) -> Envelope:
        env = self._envelope(gw, kind, body, ttl_s)
        self.state.watch(env.id)
        ok = await self.state.link.publish(cmd_topic(gw), env.model_dump_json(), qos=1, expiry_s=ttl_s)
        if not ok:
            self.state.unwatch(env.id)
            raise ActionError("the broker link dropped while sending; nothing was sent", 503)
        self.sent += 1
        log.info("fleet action %s %s sent to %s", kind, env.id, gw)
        return env

    def _ack_dict(self, cmd_id: str, sent: float) -> dict[str, Any] | None:
        ack = self.state.acks.get(cmd_id)
        if ack is None:
            return None
        return {"ok": ack.ok, "reason": ack.reason, "error": ack.error, "ts": ack.ts,
                "rtt_ms": int((time.monotonic() - sent) * 1000)}

    def _refused(self, cmd_id: str) -> bool:
        ack = self.state.acks.get(cmd_id)
        return ack is not None and not ack.ok

    def _result(self, gw: str, env: Envelope, sent: float, ack: dict[str, Any] | None, ok: bool,
                error: str | None, **extra: Any) -> dict[str, Any]:
        self.state.unwatch(env.id)
        if ack is not None and not ack["ok"]:
            ok, error = False, f"the gateway refused: {ack['reason']}: {ack['error']}"
        return {"command_id": env.id, "gateway": gw, "kind": env.kind, "ok": ok, "error": error, "ack": ack,
                "elapsed_ms": int((time.monotonic() - sent) * 1000), **extra}

    # ------------------------------------------------------------ actions

    async def set(self, gw: str, devices: list[str] | None, *, volume: int | None = None,
                  power: bool | None = None, source: str | None = None) -> dict[str, Any]:
        """``device.set`` on ``devices`` (all the gateway's speakers when None)."""
        if volume is None and power is None and source is None:
            raise ActionError("nothing to set: give volume, power or source", 422)
        view = self.state.gateways.get(gw)
        if devices is None and view is not None:
            devices = sorted(d.device for d in view.devices.values() if d.kind == "speaker")
        targets = self._check(gw, devices or [])
        if not targets:
            raise ActionError(f"gateway {gw} has no speakers to set", 404)
        body = DeviceSetBody(targets=[d.device for d in targets], volume=volume, power=power, source=source)
        sent_at, sent = now_ms(), time.monotonic()
        before = {d.device: d.version for d in targets}
        env = await self._send(gw, "device.set", body)
        wanted = {k: v for k, v in (("volume", volume), ("power", power), ("source", source)) if v is not None}

        def reported(d: DeviceView) -> bool:
            st = d.state or {}
            return d.version > before[d.device] and all(st.get(k) == v for k, v in wanted.items())

        def done() -> bool:
            return self._refused(env.id) or (self.state.acks.get(env.id) is not None
                                             and all(reported(d) for d in targets))

        await self.state.wait_for(done, self.timeout_s)
        ack = self._ack_dict(env.id, sent)
        per = {d.device: {"reported": reported(d), "state": d.state, "reported_at": d.state_at
                          if reported(d) else None} for d in targets}
        ok = ack is not None and all(p["reported"] for p in per.values())
        missing = [dev for dev, p in per.items() if not p["reported"]]
        error = None if ok else ("no ack from the gateway" if ack is None else
                                 f"no report with the new values from {', '.join(missing)} within "
                                 f"{self.timeout_s:.0f} s" if missing else None)
        return self._result(gw, env, sent, ack, ok, error, requested=wanted, devices=per, sent_at=sent_at)

    async def ping(self, gw: str, devices: list[str] | None) -> dict[str, Any]:
        """Ping the gateway (devices None: the ack is the answer) or some of its devices."""
        targets = self._check(gw, devices)
        sent = time.monotonic()
        body = PingBody(targets=[d.device for d in targets] if devices else None)
        env = await self._send(gw, "ping", body)
        names = [d.device for d in targets]

        def done() -> bool:
            if self._refused(env.id):
                return True
            if self.state.acks.get(env.id) is None:
                return False
            reports = self.state.reports.get(env.id, {})
            return all(n in reports for n in names)

        await self.state.wait_for(done, self.timeout_s)
        ack = self._ack_dict(env.id, sent)
        reports = self.state.reports.get(env.id, {})
        per = {n: (reports[n].model_dump(mode="json", exclude_none=True, exclude={"kind", "command_id", "device"})
                   if n in reports else {"ok": False, "reason": "no report from the gateway"}) for n in names}
        ok = ack is not None and all(p.get("ok") for p in per.values())
        error = None if ok else "no ack from the gateway" if ack is None else (
            "; ".join(f"{n}: {p.get('reason')}" for n, p in per.items() if not p.get("ok")) or None)
        return self._result(gw, env, sent, ack, ok, error, devices=per if devices else None)

    async def health_report(self, gw: str) -> dict[str, Any]:
        self._check(gw)
        view = self.state.gateways[gw]
        before = view.health_at or 0
        sent = time.monotonic()
        env = await self._send(gw, "health.report", HealthReportBody())
        asked_at = now_ms()

        def done() -> bool:
            fresh = (view.health_at or 0) > before and (view.health_at or 0) >= asked_at
            return self._refused(env.id) or (fresh and self.state.acks.get(env.id) is not None)

        await self.state.wait_for(done, self.timeout_s)
        ack = self._ack_dict(env.id, sent)
        fresh = (view.health_at or 0) >= asked_at
        return self._result(gw, env, sent, ack, fresh and ack is not None,
                            None if fresh else "no fresh health report", health=view.health if fresh else None,
                            health_at=view.health_at if fresh else None)

    async def restart(self, gw: str, reason: str | None, *, wait_s: float | None = None) -> dict[str, Any]:
        self._check(gw)
        view = self.state.gateways[gw]
        sent = time.monotonic()
        env = await self._send(gw, "gateway.restart", GatewayRestartBody(reason=reason))
        asked_at = now_ms()
        went_offline = False

        def done() -> bool:
            nonlocal went_offline
            if self._refused(env.id):
                return True
            if view.status == "offline":
                went_offline = True
            return went_offline and view.status == "online" and (view.status_at or 0) > asked_at

        await self.state.wait_for(done, wait_s or max(self.timeout_s, 60.0))
        ack = self._ack_dict(env.id, sent)
        back = went_offline and view.status == "online"
        return self._result(gw, env, sent, ack, back, None if back else "the gateway has not come back yet",
                            status=self.state.gateway_status(view), since=view.since)
