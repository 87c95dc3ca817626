"""Pure unit tests of the InfluxQL builder, units, times and cursors (no server)."""

from __future__ import annotations

import pytest

from scheduler.ioc import influxql as q
from scheduler.ioc.routes import parse_time
from scheduler.ioc.service import decode_cursor, encode_cursor, iso_ms
from scheduler.ioc.units import unit_of


def test_quoting_of_the_characters_the_influxql_scanner_treats_specially() -> None:
    """What ``string`` and ``ident`` produce (the real parser's answer is checked in test_ioc_api)."""
    assert q.string("a'b") == "'a\\'b'"
    assert q.string("a\\b") == "'a\\\\b'"
    assert q.string("a\\'; DROP") == "'a\\\\\\'; DROP'"
    assert q.string("l1\nl2") == "'l1\\nl2'"
    assert q.ident('we"ird\\') == '"we\\"ird\\\\"'
    flt = q.Filter(frozenset({"a"}), ("d-1",), ("Xã O'Neil\\",))
    sel = q.Select("water_level", ("water_level_cm",), flt)
    stmt = sel.raw(10, 20, 5)
    assert stmt == (
        'SELECT "water_level_cm", "gateway", "device", "commune" FROM "water_level" WHERE ("gateway" = \'a\') '
        "AND (\"device\" = 'd-1') AND (\"commune\" = 'Xã O\\'Neil\\\\') AND time >= 10 AND time < 20 "
        "ORDER BY time ASC LIMIT 5"
    )
    for bad in ("water level", 'x"', "x;", "x'", "1abc", "a" * 65, "/x/", ""):
        with pytest.raises(q.QueryParamError):
            q.check_name(bad, "measurement")
    for bad in ("X", "a b", "a'", "a;b", "a" * 65, ""):
        with pytest.raises(q.QueryParamError):
            q.check_id(bad, "gateway")
    for bad in ("a\nb", "a\x00", "x" * 201, ""):
        with pytest.raises(q.QueryParamError):
            q.check_commune(bad)


def test_every_and_functions() -> None:
    assert q.parse_every("5m") == 300_000
    assert q.parse_every("1d") == 86_400_000
    assert q.parse_every("1500ms") == 1500
    for bad in ("5", "m", "0s", "500ms", "5 m", "5M", "-5m", "5m;", "9999999999s", "9999999d", "367d"):
        with pytest.raises(q.QueryParamError) as ei:
            q.parse_every(bad)
        assert ei.value.param == "every"
    sel = q.Select("rain", ("rain_mm",), q.Filter(), "mean", 300_000)
    assert sel.aggregated(0, 10, 3, origin_ms=1_000_260_000) == (
        'SELECT MEAN("rain_mm") AS "rain_mm" FROM "rain" WHERE time >= 0 AND time < 10 '
        'GROUP BY time(300000ms, 60000ms), "gateway", "device", "commune" fill(none) ORDER BY time ASC LIMIT 3'
    )
    # An empty area: a condition no series meets, never "no condition".
    assert q.Filter(frozenset()).clauses() == ['"gateway" = \'\'']


def test_units_from_field_names() -> None:
    assert unit_of("water_level_cm") == "cm"
    assert unit_of("rain_rate_mm_h") == "mm/h"
    assert unit_of("rain_mm") == "mm"
    assert unit_of("temperature_c") == "°C"
    assert unit_of("humidity_pct") == "%"
    assert unit_of("pm2_5_ugm3") == "µg/m³"
    assert unit_of("pressure_hpa") == "hPa"
    assert unit_of("battery_v") == "V"
    assert unit_of("uptime_s") == "s"
    assert unit_of("clock_offset_ms") == "ms"
    assert unit_of("tips") is None and unit_of("load1") is None and unit_of("mains_present") is None


def test_times_and_cursors() -> None:
    assert parse_time("2026-12-02T10:00:00+07:00", "from", 0) == parse_time("2026-12-02T03:00:00Z", "from", 0)
    assert parse_time("2026-12-02T03:00:00.123Z", "from", 0) % 1000 == 123
    assert parse_time("2026-12-02T10:00:00 07:00", "from", 0) == parse_time("2026-12-02T03:00:00Z", "from", 0)
    assert parse_time(None, "from", 42) == 42
    for bad in ("2026-12-02T10:00:00", "now", "1764644400000", "2026-13-02T00:00:00Z"):
        with pytest.raises(q.QueryParamError) as ei:
            parse_time(bad, "to", 0)
        assert ei.value.param == "to"
    assert iso_ms(1_764_644_400_007) == "2025-12-02T03:00:00.007Z"
    c = encode_cursor(5_000_000, 1, 10, "abc")
    assert decode_cursor(c, "abc") == (5_000_000, 1, 10)
    other, out_of_range = encode_cursor(5_000_000, 1, 10, "other"), encode_cursor(99 * 10**9, 1, 10, "abc")
    for bad in (c + "x", "not-a-cursor", other, out_of_range):
        with pytest.raises(q.QueryParamError) as ei:
            decode_cursor(bad, "abc")
        assert ei.value.param == "cursor"
