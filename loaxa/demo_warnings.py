"""The demo's local flood warning (issue 14), kept apart from loaxa/demo.py.

Each demo gateway gets a river gauge on its commune LAN (``lan-mucnuoc-song``, an ``mqtt_sensor`` with
its own broker account); once the scheduler and the gateways are up, a background thread signs in
as the demo admin, has the scheduler read the warning aloud (TTS) and sends every gateway a rule:
water level ≥ 150 cm for 5 s → the warning on all its speakers, at the emergency level. The banner
then shows the one command that raises the river (``loaxa sim water-level``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

GAUGE = "lan-mucnuoc-song"  # "lan-": a networked sensor on the commune LAN, like the demo's others
THRESHOLD_CM = 150
WARNING_TEXT = ("Thông báo khẩn: mực nước sông đã lên mức báo động 2. "
                "Đề nghị bà con vùng trũng di chuyển người và tài sản lên nơi cao.")


def gauge_device() -> dict[str, Any]:
    return {"id": GAUGE, "type": "mqtt_sensor", "measurement": "water_level", "name": "Mực nước sông"}


def rules_for(media_sha256: str) -> dict[str, Any]:
    return {"rules": [{"id": "lu-song", "device": GAUGE, "field": "water_level_cm", "above": THRESHOLD_CM,
                       "for_s": 5, "hysteresis": 10, "media": media_sha256, "level": "emergency",
                       "repeat_every_min": 10, "max_plays": 3, "title": "Cảnh báo lũ (cảm biến tại xã)"}]}


def send_rules(url: str, password: str, gateways: list[str], stopping: threading.Event,
               timeout_s: float = 180.0) -> dict[str, str]:
    """Sign in, make the warning audio, send each gateway its rule; what happened, by gateway."""
    import httpx

    result: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=90) as http:
        while not stopping.is_set() and time.monotonic() < deadline:
            try:
                r = http.post("/api/auth/login", json={"login": "admin", "password": password})
                if r.status_code == 200:
                    http.headers["X-CSRF-Token"] = r.json()["csrf_token"]
                    break
            except httpx.HTTPError:
                pass
            stopping.wait(1.0)
        else:
            return {gw: "scheduler not reachable" for gw in gateways}
        r = http.post("/api/tts", json={"text": WARNING_TEXT, "slow": True})
        if r.status_code != 201:
            return {gw: f"TTS failed: HTTP {r.status_code}" for gw in gateways}
        body = rules_for(r.json()["sha256"])
        pending = list(gateways)
        while pending and not stopping.is_set() and time.monotonic() < deadline:
            for gw in list(pending):
                try:
                    r = http.put(f"/api/gateways/{gw}/warning-rules", json=body)
                except httpx.HTTPError as exc:
                    result[gw] = str(exc)
                    continue
                if r.status_code == 200:
                    result[gw] = "ok"
                    pending.remove(gw)
                else:
                    result[gw] = f"HTTP {r.status_code}: {r.text[:200]}"
            if pending:
                stopping.wait(3.0)
    return result


def start(endpoints: dict[str, Any], stopping: threading.Event) -> threading.Thread | None:
    """Send the rules in the background (the demo goes on meanwhile); prints the outcome."""
    if "scheduler" not in endpoints or "accounts" not in endpoints:
        return None
    url = endpoints["scheduler"]["url"]
    password = endpoints["accounts"]["admin"]["password"]
    gateways = list(endpoints["gateways"])

    def run() -> None:
        for gw, what in send_rules(url, password, gateways, stopping).items():
            if what == "ok":
                print(f"  local flood warning rule on {gw}: {GAUGE}.water_level_cm >= {THRESHOLD_CM} cm for 5 s",
                      flush=True)
            else:
                print(f"  ! local flood warning rule for {gw} not sent: {what}", flush=True)

    t = threading.Thread(target=run, name="demo-warning-rules", daemon=True)
    t.start()
    return t


def banner_lines(endpoints: dict[str, Any]) -> list[str]:
    gw, info = next(iter(endpoints["gateways"].items()))
    return [
        "",
        "Local flood warning (works with the centre cut off): raise the river at the gauge of one commune,",
        "and its speakers play the warning within seconds; lower it again to clear it:",
        f"  .venv/bin/loaxa sim water-level {gw} {GAUGE} --cm 180 --broker {info['lan_devices_mqtt']} \\",
        f"      --credentials {info['device_credentials']}",
        f"  .venv/bin/loaxa sim water-level {gw} {GAUGE} --cm 80 --broker {info['lan_devices_mqtt']} \\",
        f"      --credentials {info['device_credentials']}",
    ]
