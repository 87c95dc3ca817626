"""A sensor's side of telemetry receipts: keep every reading until the gateway says it is on disk.

The PUBACK a sensor gets comes from the commune's broker, which holds the reading in memory until its
next save; the gateway's receipt (``loaxa/v1/{gw}/dev/{dev}/receipt``, docs/protocol.md) comes after
the reading is committed to the gateway's spool. :class:`ReceiptBuffer` is what a device keeps:

* :meth:`add` every reading before publishing it;
* :meth:`on_receipt` with each receipt payload: the readings it names are forgotten;
* after every (re)connection publish :meth:`unreceipted` again, and every ``resend_after_s`` the
  readings that waited that long (:meth:`due`): a receipt can be lost with a connection.

Sending a reading twice is harmless: the gateway stores it again with the same timestamp and InfluxDB
keeps one point per series and timestamp. The buffer is bounded; when full the oldest reading goes
and is counted in ``dropped`` (a device should say so in its own state).

This module is plain Python with no MQTT library, so firmware authors can read it as the reference.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protocol.models import Reading, TelemetryReceipt

DEFAULT_MAX_READINGS = 100_000
DEFAULT_RESEND_AFTER_S = 30.0


@dataclass
class ReceiptBuffer:
    max_readings: int = DEFAULT_MAX_READINGS
    resend_after_s: float = DEFAULT_RESEND_AFTER_S
    clock: Callable[[], float] = time.monotonic
    #: ts → (fields, when last sent)
    _held: dict[int, tuple[dict[str, Any], float]] = field(default_factory=dict)
    stored: int = 0  #: readings the gateway reported on disk
    refused: int = 0  #: readings the gateway refused for good (they are not sent again)
    dropped: int = 0  #: readings forgotten without a receipt because the buffer was full
    resent: int = 0  #: readings sent more than once
    bad_receipts: int = 0

    def __len__(self) -> int:
        return len(self._held)

    def add(self, reading: Reading) -> None:
        """Hold ``reading`` (call before publishing it)."""
        if reading.ts not in self._held and len(self._held) >= self.max_readings:
            oldest = min(self._held)
            del self._held[oldest]
            self.dropped += 1
        self._held[reading.ts] = (dict(reading.fields), self.clock())

    def on_receipt(self, payload: bytes | str) -> int:
        """Forget the readings a receipt names; returns how many were held. A payload that is not a
        receipt is counted in ``bad_receipts`` and changes nothing."""
        try:
            receipt = TelemetryReceipt.model_validate(json.loads(payload))
        except (ValueError, TypeError):
            self.bad_receipts += 1
            return 0
        n = 0
        for ts in receipt.stored:
            if self._held.pop(ts, None) is not None:
                self.stored += 1
                n += 1
        for ts in receipt.refused:
            if self._held.pop(ts, None) is not None:
                self.refused += 1
                n += 1
        return n

    def unreceipted(self) -> list[Reading]:
        """Everything held, oldest first (to publish again after a reconnection)."""
        now = self.clock()
        out = []
        for ts in sorted(self._held):
            fields, _ = self._held[ts]
            self._held[ts] = (fields, now)
            out.append(Reading(ts=ts, fields=fields))
        self.resent += len(out)
        return out

    def due(self) -> list[Reading]:
        """Readings sent more than ``resend_after_s`` ago without a receipt, oldest first."""
        now = self.clock()
        limit = now - self.resend_after_s
        out = []
        for ts in sorted(t for t, (_, sent) in self._held.items() if sent <= limit):
            fields, _ = self._held[ts]
            self._held[ts] = (fields, now)
            out.append(Reading(ts=ts, fields=fields))
        self.resent += len(out)
        return out
