"""What a notification says: who gets an alarm (routing), and the text / JSON of a group of alarms.

Routing: an e-mail goes to each *contact* who has a role named by a *route* that takes the alarm
(severity at least ``min_severity``, type in ``types`` if given) and whose areas cover the alarm's
gateway. A webhook takes the alarms of its areas at or above its ``min_severity``.

The webhook payload (docs/alarms.md has it for integrators, e.g. a Zalo OA or SMS gateway bridge):
``{"version": 1, "kind": "raised"|"cleared", "gateway", "commune", "sent_at", "summary", "text",
"alarms": [ … ]}`` — ``text`` is a short plain-text message ready for an SMS or a chat.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from scheduler.fleet.alarms.lifecycle import AlarmRecord
from scheduler.fleet.config import NotifySection, Route, Webhook, severity_rank

PAYLOAD_VERSION = 1
#: An SMS is 160 GSM characters (70 with Vietnamese diacritics); a chat message can take more.
TEXT_MAX = 480

TYPE_LABELS = {
    "gateway_offline": ("gateway offline", "mất kết nối trạm"),
    "speaker_offline": ("speaker offline", "loa mất kết nối"),
    "broadcast_failed": ("broadcast failed", "phát thất bại"),
    "spool_dropping": ("spool dropping readings", "bộ đệm đầy, mất số liệu"),
    "telemetry_quarantine": ("readings quarantined", "số liệu bị cách ly"),
    "telemetry_rejected": ("readings refused", "số liệu bị từ chối"),
    "disk_full": ("disk almost full", "ổ đĩa sắp đầy"),
    "cpu_temp_high": ("CPU temperature high", "nhiệt độ CPU cao"),
    "clock_unsynced": ("clock not synchronised", "đồng hồ chưa đồng bộ"),
    "sensor_silent": ("sensor stopped reporting", "cảm biến ngừng gửi số liệu"),
    "flapping": ("flapping", "chập chờn"),
}


def label(alarm_type: str) -> tuple[str, str]:
    if alarm_type.startswith("threshold_"):
        name = alarm_type.removeprefix("threshold_")
        return (f"threshold {name}", f"vượt ngưỡng {name}")
    return TYPE_LABELS.get(alarm_type, (alarm_type.replace("_", " "), alarm_type.replace("_", " ")))


def _takes(min_severity: str, types: list[str] | None, rec: AlarmRecord) -> bool:
    return severity_rank(rec.severity) <= severity_rank(min_severity) and (types is None or rec.type in types)


def email_recipients(cfg: NotifySection, rec: AlarmRecord, kind: str) -> list[str]:
    roles: set[str] = set()
    for r in cfg.routes:
        if _takes(r.min_severity, r.types, rec) and (kind == "raised" or r.recovery):
            roles |= set(r.roles)
    out = []
    for c in cfg.contacts:
        if roles & set(c.roles) and (c.areas is None or rec.gateway in c.areas):
            out.append(c.email)
    return sorted(set(out))


def webhook_targets(cfg: NotifySection, rec: AlarmRecord, kind: str) -> list[Webhook]:
    return [w for w in cfg.webhooks
            if _takes(w.min_severity, w.types, rec) and (kind == "raised" or w.recovery)
            and (w.areas is None or rec.gateway in w.areas)]


def routes_for_role(cfg: NotifySection, role: str) -> list[Route]:
    return [r for r in cfg.routes if role in r.roles]


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    payload: dict[str, Any]

    def json(self) -> str:
        return json.dumps(self.payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _local(ms: int | None, tz: ZoneInfo) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


def _what(rec: AlarmRecord) -> str:
    return rec.device or rec.gateway


def alarm_json(rec: AlarmRecord, public_url: str | None) -> dict[str, Any]:
    return {
        "id": rec.id, "type": rec.type, "severity": rec.severity, "status": rec.status, "state": rec.state,
        "source": rec.source, "gateway": rec.gateway, "device": rec.device, "message": rec.message,
        "first_seen": rec.first_seen, "last_seen": rec.last_seen, "count": rec.count,
        "cleared_at": rec.cleared_at, "acknowledged": rec.acknowledged, "details": rec.details,
        "url": f"{public_url.rstrip('/')}/api/alarms/{rec.id}" if public_url and rec.id is not None else None,
    }


def render(kind: str, gateway: str, commune: str | None, alarms: Sequence[AlarmRecord], *, sent_at: int,
           tz: ZoneInfo, public_url: str | None) -> Rendered:
    """One message for a group of alarms of one gateway (one commune), raised or cleared together."""
    place = commune or gateway
    n = len(alarms)
    types: dict[str, list[AlarmRecord]] = {}
    for a in alarms:
        types.setdefault(a.type, []).append(a)
    worst = min((a.severity for a in alarms), key=severity_rank)
    parts_en = [f"{label(t)[0]} ×{len(v)}" if len(v) > 1 else label(t)[0] for t, v in types.items()]
    parts_vi = [f"{label(t)[1]} ({len(v)})" if len(v) > 1 else label(t)[1] for t, v in types.items()]
    if kind == "raised":
        subject = f"[Loa Xã] {worst.upper()}: {place}: {', '.join(parts_en)}"
        head_vi = f"CẢNH BÁO {place}: {', '.join(parts_vi)}"
    else:
        subject = f"[Loa Xã] RECOVERED: {place}: {', '.join(parts_en)}"
        head_vi = f"ĐÃ KHẮC PHỤC {place}: {', '.join(parts_vi)}"
    names = ", ".join(sorted({_what(a) for a in alarms}))
    short = f"{head_vi}. {names}"
    if len(short) > TEXT_MAX:
        short = short[: TEXT_MAX - 1] + "…"
    lines = [head_vi, "", f"{n} alarm(s) {'raised' if kind == 'raised' else 'cleared'} at {place} ({gateway}):", ""]
    for a in alarms:
        lines.append(f"- [{a.severity}] {label(a.type)[0]}: {_what(a)} — {a.message}")
        lines.append(f"  since {_local(a.first_seen, tz)}" + (f", cleared {_local(a.cleared_at, tz)}"
                                                             if a.cleared_at else "") + f", count {a.count}, "
                     f"alarm #{a.id}")
    lines += ["", "Acknowledge: loaxa alarms ack ID --note '…'   (or the fleet page)",
              "Silence for maintenance: loaxa alarms silence GATEWAY[/DEVICE] --for 2h"]
    if public_url:
        lines.append(f"Alarms: {public_url.rstrip('/')}/api/alarms?gateway={gateway}")
    payload = {
        "version": PAYLOAD_VERSION, "kind": kind, "gateway": gateway, "commune": commune, "sent_at": sent_at,
        "summary": subject.removeprefix("[Loa Xã] "), "text": short,
        "alarms": [alarm_json(a, public_url) for a in alarms],
    }
    return Rendered(subject=subject, text="\n".join(lines) + "\n", payload=payload)
