"""Vietnamese CAP 1.2 alerts written for the tests, and the two demo communes' geometry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: Real CAP messages written by others (the OASIS example), shared by the session: read, never copied.
#: ../shared/ beside the main checkout (/work/main), or beside a helper's worktree (/work/wt/NAME)
SHARED_CAP = next((p for p in (ROOT.parent / "shared" / "testdata" / "cap",
                               ROOT.parent.parent / "shared" / "testdata" / "cap") if p.is_dir()),
                  ROOT.parent / "shared" / "testdata" / "cap")

SENDER = "kttv-tinh@example.gov.vn"

#: Two communes a few kilometres apart (latitude, longitude)
AN_BINH = {"id": "xa-an-binh", "commune": "Xã An Bình", "code": "29881", "location": [10.30, 105.75],
           "boundary": [[10.28, 105.73], [10.28, 105.77], [10.32, 105.77], [10.32, 105.73], [10.28, 105.73]]}
PHU_MY = {"id": "xa-phu-my", "commune": "Xã Phú Mỹ", "code": "29884", "location": [10.40, 105.90]}
COMMUNES: list[dict[str, Any]] = [AN_BINH, PHU_MY]

#: A polygon over An Bình only (lat,lon pairs, closed)
POLYGON_AN_BINH = "10.25,105.70 10.25,105.80 10.33,105.80 10.33,105.70 10.25,105.70"


def cap_time(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def flood_alert(identifier: str, *, msg_type: str = "Alert", status: str = "Actual", references: str | None = None,
                severity: str = "Extreme", urgency: str = "Immediate", polygon: str | None = POLYGON_AN_BINH,
                circle: str | None = None, geocode: str | None = None,
                expires_in: timedelta | None = timedelta(hours=6),
                headline: str = "Cảnh báo lũ khẩn cấp trên sông Cái", language: str = "vi-VN",
                sent: datetime | None = None, effective: datetime | None = None) -> bytes:
    now = datetime.now(UTC)
    sent = sent or now
    area = "<areaDesc>Xã An Bình, huyện Long Hồ</areaDesc>"
    if polygon:
        area += f"<polygon>{polygon}</polygon>"
    if circle:
        area += f"<circle>{circle}</circle>"
    if geocode:
        area += f"<geocode><valueName>VN-MAXA</valueName><value>{geocode}</value></geocode>"
    refs = f"<references>{references}</references>" if references else ""
    expires = f"<expires>{cap_time(now + expires_in)}</expires>" if expires_in is not None else ""
    eff = f"<effective>{cap_time(effective)}</effective>" if effective else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{identifier}</identifier>
  <sender>{SENDER}</sender>
  <sent>{cap_time(sent)}</sent>
  <status>{status}</status>
  <msgType>{msg_type}</msgType>
  <scope>Public</scope>
  {refs}
  <info>
    <language>en-US</language>
    <category>Met</category>
    <event>Flood</event>
    <urgency>{urgency}</urgency>
    <severity>{severity}</severity>
    <certainty>Observed</certainty>
    <headline>Flood warning on the Cai river</headline>
    <area><areaDesc>An Binh commune</areaDesc></area>
  </info>
  <info>
    <language>{language}</language>
    <category>Met</category>
    <event>Lũ</event>
    <urgency>{urgency}</urgency>
    <severity>{severity}</severity>
    <certainty>Observed</certainty>
    {eff}
    {expires}
    <senderName>Đài Khí tượng Thủy văn tỉnh</senderName>
    <headline>{headline}</headline>
    <description>Lúc 17h30 ngày 02/12/2026 mực nước sông Cái tại cầu Mới đạt 4,2 m, trên báo động 3.</description>
    <instruction>Bà con vùng trũng di chuyển người và tài sản lên nơi cao ngay.</instruction>
    <area>{area}</area>
  </info>
</alert>""".encode()


def ref(identifier: str, sent: str) -> str:
    return f"{SENDER},{identifier},{sent}"


XML_BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&lol9;</identifier></alert>"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE alert [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&xxe;</identifier></alert>"""
