"""/ioc/v1 against a real InfluxDB 1.6.7 and the real scheduler app over HTTP."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from tests.ioc.conftest import IocEnv
from tests.ioc.dataset import COMMUNES, G1, G2, G3, N_G3, N_WATER, STEP_MS, WATER_DEVICES, Dataset, iso

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _ds(env: IocEnv) -> Dataset:
    ds: Dataset = env.data["ds"]
    return ds


def _window(ds: Dataset) -> dict[str, str]:
    return {"from": iso(ds.t0), "to": iso(ds.t0 + N_WATER * STEP_MS)}


def _ms(iso_z: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso_z).timestamp() * 1000)


async def _all_pages(env: IocEnv, token: str = "tok-all", **params: Any) -> tuple[list[dict[str, Any]], list[int]]:
    points: list[dict[str, Any]] = []
    sizes: list[int] = []
    cursor: str | None = None
    for _ in range(500):
        p = dict(params)
        if cursor:
            p["cursor"] = cursor
        r = await env.get("/readings", token, **p)
        assert r.status_code == 200, r.text
        body = r.json()
        points.extend(body["points"])
        sizes.append(body["count"])
        cursor = body["next_cursor"]
        if cursor is None:
            return points, sizes
    raise AssertionError("pagination did not end")


async def test_readings_return_exactly_what_was_written(env: IocEnv) -> None:
    ds = _ds(env)
    for gw in (G1, G2):
        for dev in WATER_DEVICES:
            r = await env.get("/readings", measurement="water_level", gateway=gw, device=dev, **_window(ds))
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["count"] == N_WATER and body["next_cursor"] is None
            assert body["fields"] == [{"field": "water_level_cm", "unit": "cm"}]
            got = [(_ms(p["time"]), p["water_level_cm"]) for p in body["points"]]
            assert got == ds.water[(gw, dev)]
            assert {(p["gateway"], p["device"], p["commune"]) for p in body["points"]} == {(gw, dev, COMMUNES[gw])}
    # No filter: every series of the measurement, exactly once each.
    r = await env.get("/readings", measurement="water_level", **_window(ds))
    body = r.json()
    assert body["count"] == 4 * N_WATER + N_G3
    got = sorted((p["gateway"], p["device"], _ms(p["time"]), p["water_level_cm"]) for p in body["points"])
    want = sorted((gw, dev, ts, v) for (gw, dev), s in ds.water.items() for ts, v in s)
    assert got == want
    # The window is [from, to): the last reading is out when `to` is its time.
    r = await env.get("/readings", measurement="water_level", gateway=G1, device="muc-nuoc-1",
                      **{"from": iso(ds.t0), "to": iso(ds.t0 + (N_WATER - 1) * STEP_MS)})
    assert r.json()["count"] == N_WATER - 1


async def test_times_with_offsets_and_a_plus_sent_unencoded(env: IocEnv) -> None:
    ds = _ds(env)
    from datetime import UTC, datetime, timedelta, timezone

    t = datetime.fromtimestamp(ds.t0 / 1000, UTC).astimezone(timezone(timedelta(hours=7)))
    frm = t.isoformat()  # ...+07:00
    to = (t + timedelta(seconds=95)).isoformat()
    one = {"measurement": "water_level", "gateway": G1, "device": "muc-nuoc-1"}
    r = await env.get("/readings", **one, **{"from": frm, "to": to})
    assert r.json()["count"] == 10  # t0 .. t0+90 s
    # curl users often forget to encode "+": it arrives as a space and is still understood.
    url = (f"/ioc/v1/readings?measurement=water_level&gateway={G1}&device=muc-nuoc-1"
           f"&from={frm.replace('+', '%20')}&to={to.replace('+', '%20')}")
    r = await env.http.get(url, headers={"Authorization": "Bearer tok-all"})
    assert r.status_code == 200, r.text
    assert r.json()["count"] == 10


async def test_aggregation_matches_a_hand_computation(env: IocEnv) -> None:
    ds = _ds(env)
    series = ds.water[(G1, "muc-nuoc-2")]
    base = {"measurement": "water_level", "gateway": G1, "device": "muc-nuoc-2", **_window(ds), "every": "5m"}
    halves = [series[:30], series[30:]]
    expect = {
        "mean": [sum(v for _, v in h) / len(h) for h in halves],
        "min": [min(v for _, v in h) for h in halves],
        "max": [max(v for _, v in h) for h in halves],
        "last": [h[-1][1] for h in halves],
        "count": [len(h) for h in halves],
    }
    for fn, want in expect.items():
        r = await env.get("/readings", fn=fn, **base)
        assert r.status_code == 200, r.text
        pts = r.json()["points"]
        assert [_ms(p["time"]) for p in pts] == [ds.t0, ds.t0 + 300_000], fn
        assert [p["water_level_cm"] for p in pts] == pytest.approx(want, abs=1e-9), fn
    # Buckets start at `from`, not at a round time: from = t0+10 s gives buckets of readings 1-30 and 31-59.
    r = await env.get("/readings", fn="count", **{**base, "from": iso(ds.t0 + STEP_MS)})
    pts = r.json()["points"]
    assert [(_ms(p["time"]), p["water_level_cm"]) for p in pts] == [(ds.t0 + STEP_MS, 30),
                                                                    (ds.t0 + STEP_MS + 300_000, 29)]


async def test_csv_has_a_header_then_one_row_per_point(env: IocEnv) -> None:
    ds = _ds(env)
    r = await env.get("/readings", measurement="water_level", gateway=G2, device="muc-nuoc-1", format="csv",
                      **_window(ds))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == ["time", "gateway", "device", "commune", "water_level_cm"]
    assert len(rows) == 1 + N_WATER
    got = [(_ms(t), float(v)) for t, gw, dev, com, v in rows[1:]]
    assert got == ds.water[(G2, "muc-nuoc-1")]
    assert {(row[1], row[2], row[3]) for row in rows[1:]} == {(G2, "muc-nuoc-1", COMMUNES[G2])}
    r = await env.get("/latest", measurement="environment", format="csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 1
    assert rows[0]["temperature_c"] == "25.9" and rows[0]["humidity_pct"] == "80.0"


async def test_raw_pages_never_split_an_instant_and_cover_everything_once(env: IocEnv) -> None:
    ds = _ds(env)
    want = sorted((gw, dev, ts, v) for (gw, dev), s in ds.water.items() if gw != G3 for ts, v in s)
    for limit in (7, 3, 1000):  # 4 points share each instant; 3 is smaller than one instant
        pts, sizes = await _all_pages(env, measurement="water_level", gateway=f"{G1},{G2}", limit=limit,
                                      **_window(ds))
        got = sorted((p["gateway"], p["device"], _ms(p["time"]), p["water_level_cm"]) for p in pts)
        assert got == want, limit
        assert all(n % 4 == 0 for n in sizes), (limit, sizes)
        if limit == 1000:
            assert sizes == [4 * N_WATER]


async def test_aggregated_pages_cover_everything_once(env: IocEnv) -> None:
    ds = _ds(env)
    q = {"measurement": "water_level", "gateway": [G1, G2], "every": "1m", "fn": "mean", **_window(ds)}
    whole = (await env.get("/readings", **q)).json()
    assert whole["count"] == 4 * 10 and whole["next_cursor"] is None
    pts, sizes = await _all_pages(env, limit=5, **q)
    assert pts == whole["points"]
    assert len(sizes) > 1 and max(sizes) <= 5


async def test_aggregated_pages_skip_long_empty_stretches(env: IocEnv) -> None:
    ds = _ds(env)
    q = {"measurement": "water_level", "gateway": [G1, G2], "every": "1m", "fn": "count",
         "from": iso(ds.t0 - 20 * 86_400_000), "to": iso(ds.t0 + N_WATER * STEP_MS)}
    pts, sizes = await _all_pages(env, limit=400, **q)  # 4 series: windows of 100 buckets
    assert len(pts) == 4 * 10 and sum(p["water_level_cm"] for p in pts) == 4 * N_WATER
    assert max(sizes) <= 400 and len(sizes) < 20


async def test_cursor_is_tied_to_its_request(env: IocEnv) -> None:
    ds = _ds(env)
    r = await env.get("/readings", measurement="water_level", gateway=G1, limit=10, **_window(ds))
    cur = r.json()["next_cursor"]
    assert cur
    r = await env.get("/readings", measurement="water_level", gateway=G2, limit=10, cursor=cur, **_window(ds))
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", "cursor"]
    # A cursor made by hand to get round the range limit is refused too.
    import base64
    import json

    raw = json.loads(base64.urlsafe_b64decode(cur + "=" * (-len(cur) % 4)))
    raw["f"] = raw["f"] - 400 * 86_400_000
    forged = base64.urlsafe_b64encode(json.dumps(raw).encode()).decode().rstrip("=")
    r = await env.get("/readings", measurement="water_level", gateway=G1, limit=10, cursor=forged, **_window(ds))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "cursor"]


async def test_area_filter(env: IocEnv) -> None:
    ds = _ds(env)
    r = await env.get("/readings", "tok-binh", measurement="water_level", gateway=G2, **_window(ds))
    assert r.status_code == 403 and G2 in r.json()["detail"]
    r = await env.get("/readings", "tok-binh", measurement="water_level", gateway=f"{G1},{G2}", **_window(ds))
    assert r.status_code == 403 and G2 in r.json()["detail"]
    r = await env.get("/readings", "tok-binh", measurement="water_level", **_window(ds))
    body = r.json()
    assert body["count"] == 2 * N_WATER and {p["gateway"] for p in body["points"]} == {G1}
    r = await env.get("/readings", "tok-none", measurement="water_level", **_window(ds))
    assert r.status_code == 200 and r.json()["count"] == 0
    r = await env.get("/latest", "tok-binh")
    assert r.status_code == 200 and {p["gateway"] for p in r.json()["points"]} == {G1}
    r = await env.get("/communes", "tok-binh")
    assert [c["gateway"] for c in r.json()["communes"]] == [G1]
    r = await env.get("/health", "tok-binh")
    body = r.json()
    assert [g["gateway"] for g in body["gateways"]] == [G1] and {d["gateway"] for d in body["devices"]} == {G1}
    r = await env.get("/readings", "tok-many", measurement="water_level", **_window(ds))
    body = r.json()
    assert body["count"] == 2 * N_WATER and {p["gateway"] for p in body["points"]} == {G1}
    r = await env.get("/measurements", "tok-none")
    assert r.json()["measurements"] == []
    r = await env.get("/latest", "wrong-token")
    assert r.status_code == 401


async def test_limits_name_the_parameter(env: IocEnv) -> None:
    ds = _ds(env)
    m = {"measurement": "water_level"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"from": iso(ds.t0 - 40 * 86_400_000), "to": iso(ds.t0)}, "from"),
        ({"from": iso(ds.t0), "to": iso(ds.t0 - 1000)}, "to"),
        ({"from": "2026-12-02T10:00:00"}, "from"),  # no offset
        ({"to": "yesterday"}, "to"),
        ({"limit": 10_000_000}, "limit"),
        ({"limit": 0}, "limit"),
        ({"every": "1s", "fn": "mean", "from": iso(ds.t0 - 30 * 86_400_000), "to": iso(ds.t0)}, "every"),
        ({"every": "5m"}, "fn"),
        ({"fn": "mean"}, "every"),
        ({"every": "5 minutes", "fn": "mean"}, "every"),
        ({"fn": "median", "every": "5m"}, "fn"),
        ({"field": "no_such_field"}, "field"),
        ({"format": "xml"}, "format"),
        ({"gatway": G1}, "gatway"),  # misspelt: refused, never silently ignored
    ]
    for extra, param in cases:
        r = await env.get("/readings", **{**m, **extra})
        assert r.status_code == 422, (extra, r.text)
        assert r.json()["detail"][0]["loc"][-1] == param, (extra, r.text)
    r = await env.get("/readings", measurement="notes", field="note")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "field"
    r = await env.get("/readings", measurement="notes")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "measurement"
    r = await env.get("/readings", measurement="no_such_measurement")
    assert r.status_code == 404 and "no_such_measurement" in r.json()["detail"]


async def test_latest_catalogue_communes_health_alarms(env: IocEnv) -> None:
    ds = _ds(env)
    r = await env.get("/latest", measurement="water_level")
    body = r.json()
    assert body["count"] == 5
    last = {(p["gateway"], p["device"]): (_ms(p["time"]), p["water_level_cm"]) for p in body["points"]}
    assert last == {k: s[-1] for k, s in ds.water.items()}
    r = await env.get("/latest", "tok-binh", field="temperature_c")
    pts = r.json()["points"]
    assert [(p["measurement"], p["device"], p["temperature_c"]) for p in pts] == [("environment", "tram-1", 25.9)]

    r = await env.get("/measurements")
    ms = {m["measurement"]: {f["field"]: f["unit"] for f in m["fields"]} for m in r.json()["measurements"]}
    assert ms["water_level"] == {"water_level_cm": "cm"}
    assert ms["environment"] == {"temperature_c": "°C", "humidity_pct": "%"}
    assert ms["gateway_health"] == {"cpu_temp_c": "°C", "disk_used_pct": "%"}

    r = await env.get("/communes")
    com = {c["gateway"]: c for c in r.json()["communes"]}
    assert set(com) == {G1, G2, G3}
    assert com[G1]["commune"] == COMMUNES[G1]
    devs = {d["device"]: d for d in com[G1]["devices"]}
    assert devs["loa-1"]["speaker"] is True and devs["loa-1"]["measurements"] == ["device_health"]
    assert devs["muc-nuoc-1"]["measurements"] == ["water_level"] and devs["muc-nuoc-1"]["speaker"] is False
    assert set(devs) == {"loa-1", "muc-nuoc-1", "muc-nuoc-2", "tram-1"}

    r = await env.get("/health")
    body = r.json()
    gws = {g["gateway"]: g for g in body["gateways"]}
    assert gws[G1]["health"]["cpu_temp_c"] == 52.0 and gws[G2]["health"]["cpu_temp_c"] == 53.0
    assert gws[G1]["commune"] == COMMUNES[G1]
    assert {(d["device"], d["battery_v"]) for d in body["devices"]} == {("loa-1", 12.5), ("loa-7", 11.0)}

    r = await env.get("/alarms")
    assert r.status_code == 501 and "fleet" in r.json()["detail"]  # this bench mounts the IOC API alone


async def test_a_commune_with_quotes_backslashes_and_semicolons_is_matched_exactly(env: IocEnv) -> None:
    """The commune tag of G3 holds ', \\, /x/ and ; — the escaped literal finds it, and only it."""
    ds = _ds(env)
    stored = {c["gateway"]: c["commune"] for c in (await env.get("/communes")).json()["communes"]}[G3]
    assert "'" in stored and "\\" in stored and ";" in stored
    r = await env.get("/readings", measurement="water_level", commune=stored, **_window(ds))
    body = r.json()
    assert body["count"] == N_G3 and {p["gateway"] for p in body["points"]} == {G3}
    r = await env.get("/latest", commune=stored)
    assert {p["gateway"] for p in r.json()["points"]} == {G3}
