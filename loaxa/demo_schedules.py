"""The demo's daily programme (issue 10), kept apart from loaxa/demo.py.

Once the scheduler is up, a background thread does what a commune's staff would do on the first
day, through the same HTTP API as the web UI: the operator of the first commune (``canbo-…``)
makes a programme read aloud by TTS, saves "06:30 and 17:30 every day except Sunday" as a draft,
and its chairman (``chutich-…``) approves it, so the calendar (Lịch phát) shows a week of
occurrences and the gateway receives its signed horizon. A second, one-off notice is left as a
draft, so the approval page (Chờ duyệt) has something waiting.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
DAILY_RULE = "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR,SA;BYHOUR=6,17;BYMINUTE=30;BYSECOND=0"
NEWS_TEXT = ("Đài truyền thanh xã xin kính chào bà con. Ủy ban nhân dân xã tổ chức họp dân tại nhà văn hóa "
             "thôn lúc 19h30 tối thứ bảy tuần này. Kính mời bà con đến dự đầy đủ.")


def _login(http: Any, login: str, password: str, stopping: threading.Event, deadline: float) -> bool:
    import httpx

    while not stopping.is_set() and time.monotonic() < deadline:
        try:
            r = http.post("/api/auth/login", json={"login": login, "password": password})
            if r.status_code == 200:
                http.headers["X-CSRF-Token"] = r.json()["csrf_token"]
                return True
        except httpx.HTTPError:
            pass
        stopping.wait(1.0)
    return False


def _programme(http: Any, title: str, text: str) -> str:
    r = http.post("/api/tts", json={"text": text})
    r.raise_for_status()
    media = r.json()
    r = http.post("/api/programmes", json={"title": title, "items": [{"media_sha256": media["sha256"]}]})
    r.raise_for_status()
    return str(r.json()["id"])


def seed(url: str, accounts: dict[str, Any], gateway: str, stopping: threading.Event,
         timeout_s: float = 180.0) -> str:
    """Create, and approve, the demo's schedules for ``gateway``; a line saying what happened."""
    import httpx

    short = gateway.removeprefix("xa-")
    operator, approver = f"canbo-{short}", f"chutich-{short}"
    if operator not in accounts or approver not in accounts:
        return "no demo operator/approver for this commune"
    deadline = time.monotonic() + timeout_s
    today = datetime.now(TZ).replace(hour=0, minute=0, second=0, microsecond=0)
    with httpx.Client(base_url=url, timeout=90) as http:
        if not _login(http, operator, accounts[operator]["password"], stopping, deadline):
            return "scheduler not reachable"
        news = _programme(http, "Bản tin thời sự của xã", NEWS_TEXT)
        first = today.replace(hour=6, minute=30)  # a rule's start must be one of its occurrences (RFC 5545)
        while first.weekday() == 6:  # Sunday
            first += timedelta(days=1)
        r = http.post("/api/schedules", json={
            "title": "Bản tin 6h30 và 17h30 (trừ Chủ nhật)", "programme_id": news, "rrule": DAILY_RULE,
            "dtstart": first.isoformat(), "priority": "thông thường", "volume": 70, "targets": [gateway]})
        if r.status_code != 201:
            return f"daily schedule refused: HTTP {r.status_code}: {r.text[:200]}"
        daily = r.json()["id"]
        at = (today + timedelta(days=2)).replace(hour=11, minute=30)
        r = http.post("/api/schedules", json={
            "title": "Thông báo họp dân", "programme_id": news, "dtstart": at.isoformat(),
            "priority": "ưu tiên", "volume": 80, "targets": [gateway]})
        pending = "a one-off notice waits for approval" if r.status_code == 201 else \
            f"one-off notice refused: HTTP {r.status_code}"
    with httpx.Client(base_url=url, timeout=90) as http:
        if not _login(http, approver, accounts[approver]["password"], stopping, deadline):
            return "approver cannot sign in"
        r = http.post(f"/api/schedules/{daily}/approve", json={"reason": "Đồng ý phát theo lịch"})
        if r.status_code != 200:
            return f"approval refused: HTTP {r.status_code}: {r.text[:200]}"
    return f"daily programme approved by {approver}; {pending}"


def start(endpoints: dict[str, Any], stopping: threading.Event) -> threading.Thread | None:
    """Seed in the background (the demo goes on meanwhile); prints the outcome."""
    if "scheduler" not in endpoints or "accounts" not in endpoints:
        return None
    url = endpoints["scheduler"]["url"]
    accounts = endpoints["accounts"]
    gateway = next(iter(endpoints["gateways"]))

    def work() -> None:
        try:
            outcome = seed(url, accounts, gateway, stopping)
        except Exception as exc:  # the demo goes on without its schedule; say why
            outcome = f"failed: {type(exc).__name__}: {exc}"
        print(f"  schedules of {gateway}: {outcome}", flush=True)

    t = threading.Thread(target=work, name="demo-schedules", daemon=True)
    t.start()
    return t


def banner_lines(endpoints: dict[str, Any]) -> list[str]:
    if "scheduler" not in endpoints:
        return []
    gateway = next(iter(endpoints["gateways"]))
    short = gateway.removeprefix("xa-")
    return ["", f"Schedules (Lịch phát): {gateway} gets a daily programme at 06:30 and 17:30 except Sunday,",
            f"  approved by chutich-{short}; a one-off notice waits in Chờ duyệt. Check a rule without a server:",
            "  loaxa schedule occurrences --rrule 'FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR,SA;BYHOUR=6,17;BYMINUTE=0' "
            "--dtstart 2026-12-07T00:00+07:00 --from 2026-12-07T00:00+07:00 --to 2026-12-14T00:00+07:00 --json"]
