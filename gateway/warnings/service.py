"""Plugs local warning rules into the gateway: ``attach(ctx)``.

- ``warning.rules`` (signed, like every command) replaces the rule set, after every rule's media is
  verified in the gateway's media cache (fetched now, while the uplink is up, if it is not there yet);
  the media stays pinned in the cache for as long as a rule names it.
- Telemetry calls :meth:`WarningService.observe` (one of the context's ``reading_observers``) with
  every batch of readings it has accepted, before the spool commit, on the event loop: the rules are
  evaluated there, in memory, and a rule that starts or clears is handed to this service's task, which
  stores the new state and acts.
- A warning plays as a local broadcast (``warn-{rule}-{started_at}-{n}``) through the broadcast
  service (the context's ``playback``), so it pre-empts by priority and reports ``playback`` like any
  other broadcast; the ``warning`` events (``started``, ``repeated``, ``cleared``, ``suppressed``) go
  through the broadcast outbox, which keeps them on disk until the centre is reachable.
- Without the broadcast service, ``warning.rules`` is refused (``unsupported``); without telemetry,
  rules never see a reading (both are logged when the service starts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.context import GatewayContext, Playback
from gateway.telemetry.lineproto import parse_fields
from loaxa.clock import now_ms
from protocol.models import Envelope, PlanItem, WarningEvent, WarningRule, WarningRulesBody

from .rules import RuleState, Transition, evaluate, play_due, quiet_now
from .store import WarningStore

log = logging.getLogger(__name__)

#: how often active rules are checked for a repeat or the end of quiet hours
TICK_S = 1.0
QUEUE_MAX = 10_000


def _refuse(reason: str, message: str) -> Exception:
    from gateway.commands import CommandRefused

    return CommandRefused(reason, message)


class WarningService:
    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self.store = WarningStore(ctx.data_dir / "warnings.sqlite")
        self.rules: dict[str, WarningRule] = {r.id: r for r in self.store.rules()}
        stored = self.store.states()
        self.states: dict[str, RuleState] = {rid: stored.get(rid, RuleState()) for rid in self.rules}
        self._by_device: dict[str, list[WarningRule]] = {}
        self._index()
        self._queue: asyncio.Queue[Transition] = asyncio.Queue(maxsize=QUEUE_MAX)
        self._lock = asyncio.Lock()
        self.stats = {"started": 0, "cleared": 0, "plays": 0, "dropped": 0}
        self._pin()

    def _index(self) -> None:
        by: dict[str, list[WarningRule]] = {}
        for r in self.rules.values():
            by.setdefault(r.device, []).append(r)
        self._by_device = by

    def _playback(self) -> Playback:
        playback = self.ctx.playback
        if playback is None:
            raise _refuse("unsupported", "local warning rules need the broadcast service, which this gateway lacks")
        return playback

    def _pin(self) -> None:
        pinned = self.ctx.pinned_media
        pinned.clear()
        pinned.update(r.media.sha256 for r in self.rules.values())

    # ---------------------------------------------------------------- command

    async def on_rules(self, env: Envelope, body: WarningRulesBody) -> None:
        playback = self._playback()
        for rule in body.rules:  # every rule's media on disk and verified before the set is accepted
            if rule.media.bytes > playback.media_max_bytes:
                raise _refuse("media_too_large", f"rule {rule.id}: media of {rule.media.bytes} bytes is larger "
                              f"than the cache ({playback.media_max_bytes} bytes)")
            try:
                await playback.ensure_media(rule.media)
            except Exception as exc:
                raise _refuse("media_unavailable", f"rule {rule.id}: media {rule.media.sha256[:12]} is not in the "
                              f"cache and could not be fetched: {exc}") from exc
        async with self._lock:
            await asyncio.to_thread(self.store.replace_rules, body.rules, env.id, now_ms())
            old_rules, old_states = self.rules, self.states
            self.rules = {r.id: r for r in body.rules}
            self.states = {}
            for rid, rule in self.rules.items():
                prev = old_rules.get(rid)
                same_input = prev is not None and (prev.device, prev.field) == (rule.device, rule.field)
                self.states[rid] = old_states[rid] if same_input and rid in old_states else RuleState()
                if not same_input and prev is not None:
                    await asyncio.to_thread(self.store.save_state, rid, self.states[rid])
            self._index()
            self._pin()
            for rid, st in old_states.items():
                if st.active and rid not in self.rules:
                    old = old_rules[rid]
                    await self._event(old, "cleared", None, st, reason="rule_removed")
        log.info("warning rules: %d rule(s) from command %s", len(body.rules), env.id)

    # ---------------------------------------------------------------- readings (event loop, synchronous)

    def observe(self, rows: Sequence[tuple[int, str, str, str]]) -> None:
        """Evaluate accepted readings ``(ts, device, measurement, "name=1.0,...")``; cheap for devices
        without a rule (one dictionary look-up)."""
        by = self._by_device
        if not by:
            return
        for ts, dev, _meas, text in rows:
            rules = by.get(dev)
            if not rules:
                continue
            fields = parse_fields(text)
            for rule in rules:
                value = fields.get(rule.field)
                st = self.states.get(rule.id)
                if value is None or st is None:
                    continue
                tr = evaluate(rule, st, ts, value)
                if tr is None:
                    continue
                st.active = tr.kind == "start"  # at once, so the next reading does not start it twice
                try:
                    self._queue.put_nowait(tr)
                except asyncio.QueueFull:
                    self.stats["dropped"] += 1
                    log.error("warning queue full: %s of rule %s lost", tr.kind, tr.rule_id)

    # ---------------------------------------------------------------- acting

    async def _event(self, rule: WarningRule, state: str, value: float | None, st: RuleState, *,
                     broadcast_id: str | None = None, reason: str | None = None) -> None:
        ev = WarningEvent(rule_id=rule.id, state=state, at=now_ms(), device=rule.device,  # type: ignore[arg-type]
                          field=rule.field, value=value, broadcast_id=broadcast_id, plays=st.plays, reason=reason)
        log.warning("warning %s %s (%s)", rule.id, state, reason or "")
        await self._playback().queue_event(ev)

    async def _transition(self, tr: Transition) -> None:
        rule = self.rules.get(tr.rule_id)
        st = self.states.get(tr.rule_id)
        if rule is None or st is None:
            return
        now = now_ms()
        if tr.kind == "start":
            st.active, st.started_at, st.plays, st.last_play_at, st.quiet_reported = True, now, 0, None, False
            await asyncio.to_thread(self.store.save_state, rule.id, st)
            self.stats["started"] += 1
            await self._play_if_due(rule, st, now, first_value=tr.value, why=tr.why)
        else:
            st.active = False
            await asyncio.to_thread(self.store.save_state, rule.id, st)
            self.stats["cleared"] += 1
            await self._event(rule, "cleared", tr.value, st, reason=tr.why)

    async def _play_if_due(self, rule: WarningRule, st: RuleState, now: int, *, first_value: float | None = None,
                           why: str | None = None) -> None:
        if not play_due(rule, st, now):
            if st.plays == 0 and first_value is not None:
                await self._event(rule, "started", first_value, st, reason=why)
            return
        if quiet_now(rule, now):
            if not st.quiet_reported:
                st.quiet_reported = True
                await self._event(rule, "suppressed", first_value, st, reason="quiet_hours")
            return
        st.quiet_reported = False
        bid = f"warn-{rule.id}-{st.started_at}-{st.plays + 1}"
        item = PlanItem(broadcast_id=bid, media=rule.media, start_at=None, targets=rule.targets,
                        volume=rule.volume, priority=rule.priority, title=rule.title)
        state = "started" if st.plays == 0 else "repeated"
        st.plays += 1
        st.last_play_at = now
        await asyncio.to_thread(self.store.save_state, rule.id, st)  # before playing: no replay after a crash
        await self._playback().play_local(item)
        self.stats["plays"] += 1
        await self._event(rule, state, first_value, st, broadcast_id=bid, reason=why)

    async def _tick(self) -> None:
        now = now_ms()
        for rid, st in list(self.states.items()):
            rule = self.rules.get(rid)
            if rule is not None and st.active and st.started_at is not None:
                await self._play_if_due(rule, st, now)

    async def run(self) -> None:
        if self.ctx.playback is None:
            log.warning("no broadcast service: local warning rules are refused")
        if self.ctx.reading_sink is None:
            log.warning("no telemetry service: local warning rules never see a reading")
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        try:
            while True:
                timeout = max(0.0, next_tick - loop.time())
                tr: Transition | None = None
                with contextlib.suppress(TimeoutError):
                    tr = await asyncio.wait_for(self._queue.get(), timeout)
                try:
                    async with self._lock:
                        if tr is not None:
                            await self._transition(tr)
                        if loop.time() >= next_tick:
                            next_tick = loop.time() + TICK_S
                            await self._tick()
                except Exception:
                    log.exception("warning rules: acting on a change failed; going on")
        finally:
            self.store.close()

    def health(self) -> Mapping[str, Any]:
        return {"warning_rules": len(self.rules),
                "warnings_active": sum(1 for s in self.states.values() if s.active),
                "warnings_played": self.stats["plays"]}


def attach(ctx: GatewayContext) -> WarningService:
    svc = WarningService(ctx)
    ctx.reading_observers.append(svc.observe)
    ctx.register_command("warning.rules", svc.on_rules)
    ctx.add_health(svc.health)
    ctx.add_task(svc.run, name="warnings")
    return svc
