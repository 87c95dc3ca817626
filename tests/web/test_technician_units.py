"""Pure pieces of the technician's pages: failure reasons in words, the SVG chart, and every template
rendered (strict: a missing key fails) from the shapes scheduler/fleet produces."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from scheduler.web.chart import Series, line_chart
from scheduler.web.i18n import translations
from scheduler.web.labels import reason_words
from scheduler.web.readings import Chart, CommuneReadings, Latest
from scheduler.web.render import Renderer
from scheduler.web.technician import ALARM_TYPES, ALARM_VIEWS, SEVERITIES, SILENCE_CHOICES

VI = translations("vi").gettext


def test_joined_reasons_are_translated_one_by_one() -> None:
    assert reason_words("media_unavailable; no_ack", VI) == "không tải được tệp âm thanh; loa không xác nhận lệnh"
    assert reason_words("media_unavailable; no_start_report", VI).endswith("loa không báo đã bắt đầu phát")
    assert reason_words("preempted by 01JXYZ", VI) == "bị ngắt bởi bản tin khẩn hơn"
    assert reason_words("something_new", VI) == "something_new"  # unknown codes stay as sent
    assert reason_words(None, VI) == "" and reason_words(" ; ", VI) == ""
    assert reason_words("; ".join(["no_ack"] * 20), VI).endswith("; …")


def test_chart_is_a_named_image_and_breaks_the_line_at_gaps() -> None:
    hour = 3600_000
    pts = [(i * hour, float(i)) for i in range(5)] + [(20 * hour, 3.0), (21 * hour, 4.0)]
    svg = str(line_chart([Series("x", pts)], title="muc-nuoc · water_level_cm", unit="cm", start_ms=0,
                         end_ms=24 * hour))
    assert svg.startswith("<svg") and 'role="img"' in svg and "<title>muc-nuoc · water_level_cm (cm)</title>" in svg
    assert svg.count("<polyline") == 2  # the silent hours are a gap, not a straight line
    assert "style=" not in svg  # the content security policy allows no inline style
    assert ">4<" in svg and ">0<" in svg  # the highest and lowest value on the axis
    vi = str(line_chart([Series("x", [(0, 1.5), (hour, 2.25)])], title="t", unit=None, start_ms=0, end_ms=hour,
                        number=lambda v: f"{v:.1f}".replace(".", ",")))
    assert ">2,2<" in vi or ">2,3<" in vi
    empty = str(line_chart([], title="<b>", unit=None, start_ms=0, end_ms=1))
    assert "<polyline" not in empty and "&lt;b&gt;" in empty


def _request(path: str) -> Request:
    return Request({"type": "http", "method": "GET", "path": path, "query_string": b"", "headers": [],
                    "server": ("test", 80), "scheme": "http"})


class _Tech:
    name = "kythuat"
    csrf_token = "t"
    display_name = "Kỹ thuật viên"

    def can(self, perm: str, gateway: str | None = None) -> bool:
        return True

    def gateways(self, perm: str) -> None:
        return None


def _gateway(health: dict[str, Any] | None) -> dict[str, Any]:
    speaker = {"gateway": "xa-an-binh", "device": "loa-01", "kind": "speaker", "type": "ip_speaker", "name": "Loa chợ",
               "configured": True, "status": "online", "online": True, "since": 1, "last_seen": 2, "volume": 70,
               "power": True, "source": "stream", "playing": None, "firmware": "sim-1.0", "rssi": -60,
               "signal": {"rssi": -60}, "state_ts": 2, "state": {"online": True}}
    sensor = {**speaker, "device": "muc-nuoc", "kind": "sensor", "status": "unknown", "online": None, "volume": None,
              "power": None, "firmware": None, "rssi": None, "name": None}
    return {"id": "xa-an-binh", "commune": "Xã An Bình", "status": "online", "since": 1, "last_seen": 2,
            "version": "1.0", "health": health, "health_at": 2, "devices_listed": True,
            "devices": [speaker, sensor], "speakers": [speaker], "sensors": [sensor]}


def test_every_technician_template_renders_in_both_languages() -> None:
    renderer = Renderer("Asia/Ho_Chi_Minh")
    full = {"ts": 1, "uptime_s": 3600.0, "cpu_temp_c": 81.0, "load1": 0.5, "mem_used_pct": 40.0, "disk_used_pct": 95.0,
            "spool_depth": 3, "clock_offset_ms": 12.0, "clock_synced": False, "devices_online": 1, "devices_total": 2}
    readings = CommuneReadings(0, 86_400_000, latest=[Latest("muc-nuoc", "water_level", "water_level_cm", 101.5,
                                                             "cm", 5)],
                               charts=[Chart("muc-nuoc", "water_level", "water_level_cm", "cm", [(1, 1.0), (2, 2.0)])])
    alarm = {"id": 1, "source": "dev:xa-an-binh/loa-01", "type": "speaker_offline", "gateway": "xa-an-binh",
             "device": "loa-01", "severity": "minor", "message": "speaker loa-01 is offline", "first_seen": 1,
             "last_seen": 2, "status": "active", "count": 1, "details": {}, "acknowledged": True, "ack_by": "kythuat",
             "ack_at": 3, "ack_note": "đang đến", "cleared_at": None, "cleared_by": None, "clear_note": None,
             "notified": True, "silenced": False, "state": "ACTIVE_ACK", "can_act": True}
    silence = {"id": 1, "gateway": "xa-an-binh", "device": None, "types": None, "starts_at": 1, "ends_at": 2,
               "reason": "bảo trì", "created_by": "kythuat", "created_at": 1, "can_end": True}
    for health in (None, {"ts": 1}, full):
        g = _gateway(health)
        pages: list[tuple[str, str, dict[str, Any]]] = [
            ("/fleet", "fleet.html", {"gateways": [g], "connected": False, "live": True}),
            ("/fleet/xa-an-binh", "commune.html", {
                "g": g, "alarms": [alarm], "readings": readings, "can_control": True, "alarm_types": ALARM_TYPES,
                "severities": SEVERITIES,
                "charts": [{"chart": readings.charts[0], "svg": line_chart([], title="t", unit=None, start_ms=0,
                                                                           end_ms=1)}]}),
            ("/fleet/x/loa-01/action", "action_confirm.html", {"g": g, "d": g["speakers"][0], "action": "volume",
                                                                "volume": 35, "back": "/fleet/xa-an-binh"}),
            ("/fleet/x/loa-01/action", "action_result.html", {
                "g": g, "d": g["speakers"][0], "action": "volume", "volume": 35, "back": "/",
                "result": {"ok": True, "ack": {"ok": True}, "elapsed_ms": 5}, "report": {},
                "state": {"volume": 35, "power": True}}),
            ("/fleet/x/loa-01/action", "action_result.html", {
                "g": g, "d": g["speakers"][0], "action": "ping", "volume": None, "back": "/",
                "result": {"ok": False, "ack": {"ok": True}, "elapsed_ms": 5},
                "report": {"ok": False, "reason": "no_answer"}, "state": {}}),
            ("/fleet/x/action", "gateway_action.html", {
                "g": g, "action": "ping", "back": "/", "result": {"ok": True, "ack": {"ok": True, "rtt_ms": 40}}}),
            ("/fleet/x/action", "gateway_action.html", {
                "g": g, "action": "health", "back": "/", "result": {"ok": False, "ack": None}}),
            ("/fleet/x/action", "gateway_action.html", {"g": g, "action": "health", "back": "/", "refused": "x"}),
            ("/alarms", "alarms.html", {
                "view": "active", "views": ALARM_VIEWS, "alarms": [alarm], "communes": {"xa-an-binh": "Xã An Bình"},
                "alarm_types": ALARM_TYPES, "severities": SEVERITIES, "silences": [silence],
                "silence_gateways": ["xa-an-binh"], "silence_choices": SILENCE_CHOICES, "error": None,
                "notice": None}),
        ]
        for path, template, ctx in pages:
            for lang in ("vi", "en"):
                req = _request(path)
                req.scope["query_string"] = f"lang={lang}".encode()
                html = bytes(renderer.page(req, template, ctx, principal=_Tech(), csrf_token="t").body).decode()
                assert "</html>" in html, template
    vi = bytes(renderer.page(_request("/fleet"), "fleet.html", {"gateways": [_gateway(full)], "connected": True,
                                                          "live": True}, principal=_Tech()).body).decode()
    assert "95 %" in vi and "81,0 °C" in vi and "chưa đồng bộ" in vi


async def test_readings_unavailable_is_a_state_of_the_page_not_an_error() -> None:
    from scheduler.ioc.client import InfluxError
    from scheduler.web.readings import commune_readings

    class Down:
        async def visible_measurements(self, flt: Any) -> list[str]:
            raise InfluxError("InfluxDB at http://127.0.0.1:1 did not answer")

    none = await commune_readings(None, "xa-an-binh", [], 10**12)
    assert not none.configured and none.error is None and none.charts == []
    down = await commune_readings(Down(), "xa-an-binh", ["muc-nuoc"], 10**12)
    assert down.configured and down.error is not None and "did not answer" in down.error
    assert down.end_ms - down.start_ms == 24 * 3600 * 1000
