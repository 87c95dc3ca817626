"""CAP 1.2 (OASIS Common Alerting Protocol) messages: parsed without entities or DTDs, validated.

Parsing is done by ``defusedxml``: a document with a DTD (and so any entity: the "billion laughs"
bomb, external entities reading files or URLs) is refused before anything is expanded. Every refusal
is a :class:`CapError` naming the element at fault as a path (``alert/info[2]/urgency``), which the
HTTP API returns to the sender.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

NS = "urn:oasis:names:tc:emergency:cap:1.2"
_Q = "{" + NS + "}"

MAX_BYTES = 512 * 1024
MAX_INFOS = 20
MAX_AREAS = 100
MAX_POINTS = 5000
MAX_TEXT = 8000

STATUSES = ("Actual", "Exercise", "System", "Test", "Draft")
MSG_TYPES = ("Alert", "Update", "Cancel", "Ack", "Error")
SCOPES = ("Public", "Restricted", "Private")
CATEGORIES = ("Geo", "Met", "Safety", "Security", "Rescue", "Fire", "Health", "Env", "Transport", "Infra",
              "CBRNE", "Other")
URGENCIES = ("Immediate", "Expected", "Future", "Past", "Unknown")
SEVERITIES = ("Extreme", "Severe", "Moderate", "Minor", "Unknown")
CERTAINTIES = ("Observed", "Likely", "Possible", "Unlikely", "Unknown")
# CAP 1.0 wrote "Very Likely"; 1.2 keeps it readable as "Likely"
_CERTAINTY_ALIASES = {"Very Likely": "Likely"}
#: CAP dateTime: 2026-12-02T17:30:00+07:00 (a time zone is required; "-00:00" means UTC)
_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}:\d{2}|Z)$")


class CapError(ValueError):
    """A CAP message refused: ``element`` names where (``alert/info[1]/urgency``)."""

    def __init__(self, element: str, message: str) -> None:
        super().__init__(f"{element}: {message}")
        self.element = element
        self.message = message


@dataclass(frozen=True)
class Circle:
    lat: float
    lon: float
    radius_km: float


@dataclass
class Area:
    desc: str
    polygons: list[list[tuple[float, float]]] = field(default_factory=list)  # (lat, lon) points
    circles: list[Circle] = field(default_factory=list)
    geocodes: list[tuple[str, str]] = field(default_factory=list)  # (valueName, value)


@dataclass
class Info:
    language: str
    categories: list[str]
    event: str
    urgency: str
    severity: str
    certainty: str
    effective: int | None = None
    onset: int | None = None
    expires: int | None = None
    sender_name: str | None = None
    headline: str | None = None
    description: str | None = None
    instruction: str | None = None
    areas: list[Area] = field(default_factory=list)

    def is_vietnamese(self) -> bool:
        return self.language.lower() in ("vi", "vi-vn")


@dataclass
class Alert:
    identifier: str
    sender: str
    sent: str
    sent_ms: int
    status: str
    msg_type: str
    scope: str
    source: str | None = None
    note: str | None = None
    references: list[tuple[str, str, str]] = field(default_factory=list)  # (sender, identifier, sent)
    infos: list[Info] = field(default_factory=list)

    @property
    def key(self) -> str:
        """``sender,identifier,sent``: how CAP's ``<references>`` names a message."""
        return f"{self.sender},{self.identifier},{self.sent}"

    def chosen_info(self) -> Info | None:
        """The Vietnamese ``<info>`` (``vi`` or ``vi-VN``), else the first."""
        for info in self.infos:
            if info.is_vietnamese():
                return info
        return self.infos[0] if self.infos else None

    def summary(self) -> dict[str, Any]:
        return {"identifier": self.identifier, "sender": self.sender, "sent": self.sent, "status": self.status,
                "msgType": self.msg_type, "scope": self.scope}


def _local(el: Element) -> str:
    return el.tag[len(_Q):] if isinstance(el.tag, str) and el.tag.startswith(_Q) else str(el.tag)


def _children(el: Element, name: str) -> list[Element]:
    return [c for c in el if c.tag == _Q + name]


def _text(el: Element, name: str, path: str, *, required: bool = False, limit: int = MAX_TEXT) -> str | None:
    found = _children(el, name)
    if len(found) > 1 and name not in ("category",):
        raise CapError(f"{path}/{name}", "appears more than once")
    if not found:
        if required:
            raise CapError(f"{path}/{name}", "is required")
        return None
    text = (found[0].text or "").strip()
    if required and not text:
        raise CapError(f"{path}/{name}", "is empty")
    if len(text) > limit:
        raise CapError(f"{path}/{name}", f"longer than {limit} characters")
    return text or None


def _choice(value: str | None, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise CapError(where, f"{value!r} is not one of {', '.join(allowed)}")
    return value


def parse_datetime(text: str, where: str) -> int:
    """A CAP dateTime to epoch ms (the time zone is required by CAP 1.2)."""
    if not _DATETIME_RE.fullmatch(text):
        raise CapError(where, f"{text[:40]!r} is not a CAP dateTime like 2026-12-02T17:30:00+07:00")
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise CapError(where, f"{text[:40]!r}: {exc}") from exc
    return int(dt.timestamp() * 1000)


def _point(text: str, where: str) -> tuple[float, float]:
    try:
        lat_s, lon_s = text.split(",")
        lat, lon = float(lat_s), float(lon_s)
    except ValueError as exc:
        raise CapError(where, f"{text[:40]!r} is not a 'latitude,longitude' pair") from exc
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise CapError(where, f"{text[:40]!r} is outside WGS 84 latitude/longitude")
    return lat, lon


def _polygon(text: str, where: str) -> list[tuple[float, float]]:
    pairs = text.split()
    if len(pairs) > MAX_POINTS:
        raise CapError(where, f"more than {MAX_POINTS} points")
    pts = [_point(p, where) for p in pairs]
    if len(pts) < 4 or pts[0] != pts[-1]:
        raise CapError(where, "a polygon needs at least 4 points and must end where it starts")
    return pts


def _circle(text: str, where: str) -> Circle:
    parts = text.split()
    if len(parts) != 2:
        raise CapError(where, f"{text[:40]!r} is not 'latitude,longitude radius_km'")
    lat, lon = _point(parts[0], where)
    try:
        radius = float(parts[1])
    except ValueError as exc:
        raise CapError(where, f"radius {parts[1][:20]!r} is not a number") from exc
    if not 0 <= radius <= 5000:
        raise CapError(where, "radius must be 0–5000 km")
    return Circle(lat, lon, radius)


def _area(el: Element, path: str) -> Area:
    desc = _text(el, "areaDesc", path, required=True, limit=1000)
    assert desc is not None
    area = Area(desc)
    for i, p in enumerate(_children(el, "polygon"), 1):
        area.polygons.append(_polygon((p.text or "").strip(), f"{path}/polygon[{i}]"))
    for i, c in enumerate(_children(el, "circle"), 1):
        area.circles.append(_circle((c.text or "").strip(), f"{path}/circle[{i}]"))
    for i, g in enumerate(_children(el, "geocode"), 1):
        gpath = f"{path}/geocode[{i}]"
        name = _text(g, "valueName", gpath, required=True, limit=200)
        value = _text(g, "value", gpath, required=True, limit=200)
        assert name is not None and value is not None
        area.geocodes.append((name, value))
    return area


def _info(el: Element, path: str) -> Info:
    categories = [(c.text or "").strip() for c in _children(el, "category")]
    if not categories:
        raise CapError(f"{path}/category", "is required")
    for i, c in enumerate(categories, 1):
        _choice(c, CATEGORIES, f"{path}/category[{i}]")
    certainty = _text(el, "certainty", path, required=True)
    certainty = _CERTAINTY_ALIASES.get(certainty or "", certainty)
    info = Info(
        language=_text(el, "language", path, limit=35) or "en-US",
        categories=categories,
        event=_text(el, "event", path, required=True, limit=500) or "",
        urgency=_choice(_text(el, "urgency", path, required=True), URGENCIES, f"{path}/urgency"),
        severity=_choice(_text(el, "severity", path, required=True), SEVERITIES, f"{path}/severity"),
        certainty=_choice(certainty, CERTAINTIES, f"{path}/certainty"),
        sender_name=_text(el, "senderName", path, limit=500),
        headline=_text(el, "headline", path, limit=500),
        description=_text(el, "description", path),
        instruction=_text(el, "instruction", path),
    )
    for name in ("effective", "onset", "expires"):
        value = _text(el, name, path, limit=40)
        if value is not None:
            setattr(info, name, parse_datetime(value, f"{path}/{name}"))
    areas = _children(el, "area")
    if len(areas) > MAX_AREAS:
        raise CapError(f"{path}/area", f"more than {MAX_AREAS} areas")
    info.areas = [_area(a, f"{path}/area[{i}]") for i, a in enumerate(areas, 1)]
    return info


def parse_references(text: str, where: str = "alert/references") -> list[tuple[str, str, str]]:
    out = []
    for ref in text.split():
        parts = ref.split(",")
        if len(parts) != 3 or not all(parts):
            raise CapError(where, f"{ref[:100]!r} is not 'sender,identifier,sent'")
        out.append((parts[0], parts[1], parts[2]))
    return out


def parse_cap(raw: bytes) -> Alert:
    """Parse and validate one CAP 1.2 ``<alert>``; :class:`CapError` names the element at fault."""
    if len(raw) > MAX_BYTES:
        raise CapError("alert", f"the message is larger than {MAX_BYTES} bytes")
    try:
        root = fromstring(raw, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise CapError("alert", f"refused: {type(exc).__name__} (DTDs and entities are not accepted)") from exc
    except ParseError as exc:
        raise CapError("alert", f"not well-formed XML: {exc}") from exc
    if root.tag != _Q + "alert":
        if _local(root) == "alert" or str(root.tag).endswith("}alert"):
            raise CapError("alert", f"namespace must be {NS} (CAP 1.2), got {str(root.tag)[:120]}")
        raise CapError("alert", f"the root element is {str(root.tag)[:120]}, not a CAP 1.2 <alert>")
    p = "alert"
    sent = _text(root, "sent", p, required=True, limit=40)
    assert sent is not None
    alert = Alert(
        identifier=_text(root, "identifier", p, required=True, limit=500) or "",
        sender=_text(root, "sender", p, required=True, limit=500) or "",
        sent=sent,
        sent_ms=parse_datetime(sent, f"{p}/sent"),
        status=_choice(_text(root, "status", p, required=True), STATUSES, f"{p}/status"),
        msg_type=_choice(_text(root, "msgType", p, required=True), MSG_TYPES, f"{p}/msgType"),
        scope=_choice(_text(root, "scope", p, required=True), SCOPES, f"{p}/scope"),
        source=_text(root, "source", p, limit=500),
        note=_text(root, "note", p),
    )
    for name, value in (("identifier", alert.identifier), ("sender", alert.sender)):
        if any(ch in value for ch in " ,<&"):
            raise CapError(f"{p}/{name}", "must not contain spaces, commas, < or &")
    refs = _text(root, "references", p)
    if refs:
        alert.references = parse_references(refs)
    if alert.msg_type in ("Update", "Cancel") and not alert.references:
        raise CapError(f"{p}/references", f"an {alert.msg_type} must name the earlier message(s) it changes")
    infos = _children(root, "info")
    if len(infos) > MAX_INFOS:
        raise CapError(f"{p}/info", f"more than {MAX_INFOS} info blocks")
    alert.infos = [_info(el, f"{p}/info[{i}]") for i, el in enumerate(infos, 1)]
    return alert
