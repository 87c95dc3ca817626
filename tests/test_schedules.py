"""Schedules' pure logic: recurrence against an independent expansion, DST by hand, levels,
conflicts, iCalendar and the time input rules."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from dateutil import rrule as du

from scheduler.schedules.conflicts import Occurrence, conflicts, find_overlaps
from scheduler.schedules.ics import IcsError, IcsSchedule, export_ics, import_ics
from scheduler.schedules.levels import EMERGENCY, NORMAL, PRIORITY, level_of, parse_level
from scheduler.schedules.recurrence import MAX_OCCURRENCES, Recurrence, RecurrenceError, parse_rule
from scheduler.schedules.timeinput import TimeInputError, parse_time

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# ------------------------------------------------------------------ recurrence vs. dateutil

#: (zone, dtstart local, RRULE with UNTIL/COUNT as written in an .ics, EXDATE local, EXDATE days, RDATE local)
CASES = [
    (  # the daily programme: news at 06:00 and 17:00 except Sunday, a week off for Tết, two skipped slots
        HCM, datetime(2026, 1, 1, 6),
        "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR,SA;BYHOUR=6,17;BYMINUTE=0;UNTIL=20261130T100000Z",
        [datetime(2026, 4, 30, 6), datetime(2026, 9, 2, 17)], [date(2026, 2, d) for d in range(16, 21)],
        [datetime(2026, 2, 22, 8)],
    ),
    (  # every day at 06:30 in a zone with daylight saving
        BERLIN, datetime(2026, 1, 1, 6, 30), "FREQ=DAILY;BYHOUR=6;BYMINUTE=30",
        [datetime(2026, 3, 29, 6, 30), datetime(2026, 10, 25, 6, 30)], [date(2026, 12, 25)], [],
    ),
    (  # first Monday of the month, ten times
        BERLIN, datetime(2026, 1, 5, 8), "FREQ=MONTHLY;BYDAY=1MO;BYHOUR=8;BYMINUTE=0;COUNT=10", [], [],
        [datetime(2026, 12, 24, 18)],
    ),
    (  # every other Sunday at 02:30, which does not exist on 8 March (RFC 5545: becomes 03:30)
        NEW_YORK, datetime(2026, 1, 11, 2, 30), "FREQ=WEEKLY;INTERVAL=2;BYDAY=SU;BYHOUR=2;BYMINUTE=30", [], [], [],
    ),
    (  # weekday mornings and evenings in Berlin, UNTIL in UTC
        BERLIN, datetime(2026, 1, 2, 7), "FREQ=WEEKLY;BYDAY=MO,WE,FR;BYHOUR=7,19;BYMINUTE=0;UNTIL=20261106T180000Z",
        [datetime(2026, 7, 3, 19)], [], [],
    ),
]


def _reference(tz: ZoneInfo, start: datetime, rule: str, ex: list[datetime], exdays: list[date],
               rdates: list[datetime], lo: datetime, hi: datetime) -> list[datetime]:
    """dateutil's own expansion: rrulestr parses the text itself, DTSTART and EXDATE/RDATE are aware,
    rruleset applies EXDATE and RDATE. None of scheduler.schedules is used."""
    rset = du.rruleset()
    rset.rrule(du.rrulestr(rule, dtstart=start.replace(tzinfo=tz)))  # type: ignore[arg-type]
    for x in ex:
        rset.exdate(x.replace(tzinfo=tz))
    for r in rdates:
        rset.rdate(r.replace(tzinfo=tz))
    out = []
    for dt in rset:
        instant = dt.astimezone(UTC)
        if instant >= hi:
            break
        if instant >= lo and dt.date() not in exdays:
            out.append(instant)
    return out


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0].key}-{c[2].split(';')[0]}" for c in CASES])
def test_a_year_of_occurrences_equals_dateutils_own_expansion(case: tuple) -> None:  # type: ignore[type-arg]
    tz, start, rule, ex, exdays, rdates = case
    lo, hi = utc(2026, 1, 1), utc(2027, 1, 1)
    rec = Recurrence(dtstart=start.replace(tzinfo=tz), tz=tz.key, rrule=rule,
                     exdates=(*(x.replace(tzinfo=tz) for x in ex), *exdays), rdates=tuple(rdates))
    got = rec.occurrences(lo, hi)
    want = _reference(tz, start, rule, ex, exdays, rdates, lo, hi)
    assert got == want
    assert len(got) >= 10 and all(t.tzinfo is UTC for t in got)


def test_first_case_by_counting() -> None:
    """Plain arithmetic on the daily programme: weeks of 6 days x 2 slots, minus what was taken out."""
    tz, start, rule, ex, exdays, rdates = CASES[0]
    rec = Recurrence(dtstart=start.replace(tzinfo=tz), tz=tz.key, rrule=rule,
                     exdates=(*(x.replace(tzinfo=tz) for x in ex), *exdays), rdates=tuple(rdates))
    got = rec.occurrences(datetime(2026, 1, 1, tzinfo=HCM), utc(2027, 1, 1))
    days = [date(2026, 1, 1) + timedelta(n) for n in range(334)]  # to 30 November
    slots = 2 * sum(1 for d in days if d.weekday() != 6 and d not in exdays) - len(ex) + len(rdates)
    # UNTIL=20261130T100000Z is 17:00 local on the 30th: that slot still counts
    assert len(got) == slots
    assert got[-1] == datetime(2026, 11, 30, 17, tzinfo=HCM)


def test_local_wall_time_across_daylight_saving_by_hand() -> None:
    rec = Recurrence(dtstart=datetime(2026, 3, 27, 6, tzinfo=BERLIN), tz="Europe/Berlin", rrule="FREQ=DAILY")
    got = rec.occurrences(utc(2026, 3, 27), utc(2026, 3, 31))
    assert got == [utc(2026, 3, 27, 5), utc(2026, 3, 28, 5), utc(2026, 3, 29, 4), utc(2026, 3, 30, 4)]
    got = rec.occurrences(utc(2026, 10, 24), utc(2026, 10, 27))
    assert got == [utc(2026, 10, 24, 4), utc(2026, 10, 25, 5), utc(2026, 10, 26, 5)]
    # 02:30 does not exist on 29 March (moved forward by the gap) and exists twice on 25 October (the first)
    night = Recurrence(dtstart=datetime(2026, 3, 28, 2, 30, tzinfo=BERLIN), tz="Europe/Berlin", rrule="FREQ=DAILY")
    assert night.occurrences(utc(2026, 3, 28), utc(2026, 3, 30)) == [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 30)]
    assert night.occurrences(utc(2026, 10, 24), utc(2026, 10, 26)) == [utc(2026, 10, 24, 0, 30),
                                                                       utc(2026, 10, 25, 0, 30)]


def test_validity_window_rdate_and_one_off() -> None:
    rec = Recurrence(dtstart=datetime(2026, 12, 1, 6, tzinfo=HCM), rrule="FREQ=DAILY",
                     valid_from=datetime(2026, 12, 3, tzinfo=HCM), valid_until=datetime(2026, 12, 5, tzinfo=HCM),
                     rdates=(datetime(2026, 12, 4, 20, tzinfo=HCM), datetime(2026, 12, 9, 20, tzinfo=HCM)))
    got = rec.occurrences(utc(2026, 11, 1), utc(2027, 1, 1))
    assert [t.astimezone(HCM).strftime("%d %H") for t in got] == ["03 06", "04 06", "04 20"]
    once = Recurrence(dtstart=datetime(2026, 12, 1, 6, tzinfo=HCM))
    assert once.occurrences(utc(2026, 11, 1), utc(2027, 1, 1)) == [utc(2026, 11, 30, 23)]
    assert once.occurrences(utc(2026, 12, 1), utc(2027, 1, 1)) == []


@pytest.mark.parametrize(("rule", "message"), [
    ("FREQ=MINUTELY", "SECONDLY/MINUTELY are refused"),
    ("BYDAY=MO", "no FREQ"),
    ("FREQ=DAILY;FOO=1", "FOO is not supported"),
    ("FREQ=DAILY;COUNT=3;UNTIL=20261231T000000Z", "COUNT and UNTIL"),
    ("FREQ=WEEKLY;BYDAY=MON", "not a day"),
    ("FREQ=DAILY;BYHOUR=24", "outside 0..23"),
    ("FREQ=DAILY;UNTIL=20261231T000000", "UTC time"),
    ("FREQ=DAILY;FREQ=WEEKLY", "given twice"),
    ("FREQ=DAILY;COUNT=99999999", "COUNT"),
    ("FREQ=DAILY;COUNT=10001", "outside 1..10000"),
    ("FREQ=DAILY;" + "BYHOUR=1;" * 100, "RRULE parts"),
])
def test_rules_that_are_refused(rule: str, message: str) -> None:
    with pytest.raises(RecurrenceError, match=message):
        parse_rule(rule)


def test_other_refusals_and_the_cap() -> None:
    with pytest.raises(RecurrenceError, match="not an occurrence"):  # Tuesday start, Monday rule
        Recurrence(dtstart=datetime(2026, 12, 1, 6, tzinfo=HCM), rrule="FREQ=WEEKLY;BYDAY=MO")
    with pytest.raises(RecurrenceError, match="unknown"):
        Recurrence(dtstart=datetime(2026, 12, 1, 6, tzinfo=HCM), tz="Asia/Hanoi_City")
    with pytest.raises(RecurrenceError, match="IANA"):
        Recurrence(dtstart=datetime(2026, 12, 1, 6, tzinfo=HCM), tz="../../etc/passwd")
    with pytest.raises(RecurrenceError, match="no UTC offset"):
        Recurrence(dtstart=datetime(2026, 12, 1, 6))
    hourly = Recurrence(dtstart=datetime(2026, 1, 1, tzinfo=HCM), rrule="FREQ=HOURLY")
    assert len(hourly.occurrences(utc(2026, 1, 1), utc(2026, 12, 1))) < MAX_OCCURRENCES
    with pytest.raises(RecurrenceError, match="more than 10000 occurrences"):
        hourly.occurrences(utc(2026, 1, 1), utc(2027, 12, 1))
    with pytest.raises(RecurrenceError, match="longer than"):
        hourly.occurrences(utc(2026, 1, 1), utc(2030, 1, 1))


# ------------------------------------------------------------------ levels


def test_levels_of_tt39() -> None:
    assert [lv.priority for lv in (NORMAL, PRIORITY, EMERGENCY)] == [3, 6, 9]
    assert [parse_level(x) for x in ("thông thường", "Ưu tiên", "KHẨN CẤP", "khan cap", "emergency", "7")] == [
        3, 6, 9, 9, 9, 7]
    assert [level_of(p).vi for p in range(10)] == ["thông thường"] * 6 + ["ưu tiên"] * 3 + ["khẩn cấp"]
    for bad in ("rất gấp", "10", -1):
        with pytest.raises(ValueError, match="0-9"):
            parse_level(bad)


# ------------------------------------------------------------------ conflicts


def occ(schedule: str, hour: int, minutes: int, priority: int, speakers: set[str], order: int | None = None
        ) -> Occurrence:
    return Occurrence(schedule, datetime(2026, 12, 1, hour, tzinfo=HCM), timedelta(minutes=minutes), priority,
                      frozenset(speakers), order)


def test_conflicts_equal_priority_overlap_on_a_shared_speaker() -> None:
    news = occ("tin-sang", 6, 30, 3, {"xa-a/loa-1", "xa-a/loa-2"})
    music = Occurrence("nhac", datetime(2026, 12, 1, 6, 20, tzinfo=HCM), timedelta(minutes=20), 3,
                       frozenset({"xa-a/loa-2", "xa-a/loa-3"}))
    elsewhere = occ("xa-b", 6, 60, 3, {"xa-b/loa-1"})
    after = occ("sau", 7, 10, 3, {"xa-a/loa-1"})  # starts when the news ends: no overlap
    [c] = conflicts([after, music, elsewhere, news])
    assert (c.first.schedule, c.second.schedule, c.speakers) == ("tin-sang", "nhac", frozenset({"xa-a/loa-2"}))
    assert (c.start, c.end) == (datetime(2026, 12, 1, 6, 20, tzinfo=HCM), datetime(2026, 12, 1, 6, 30, tzinfo=HCM))
    assert "conflict (equal priority)" in c.describe()
    storm = occ("bao", 6, 15, 9, {"xa-a/loa-1"})
    [o] = find_overlaps([news, storm])
    assert o.winner is storm and not o.is_conflict
    ordered = [occ("a", 6, 30, 3, {"s"}, order=2), occ("b", 6, 30, 3, {"s"}, order=1)]
    [o] = find_overlaps(ordered)
    assert o.winner is not None and o.winner.schedule == "b"


# ------------------------------------------------------------------ iCalendar


def test_ics_round_trip_and_a_calendar_programs_file() -> None:
    rec = Recurrence(dtstart=datetime(2026, 12, 1, 6, tzinfo=BERLIN), tz="Europe/Berlin",
                     rrule="FREQ=WEEKLY;BYDAY=TU,TH;BYHOUR=6,17;BYMINUTE=0;UNTIL=20270301T000000Z",
                     exdates=(datetime(2026, 12, 3, 17, tzinfo=BERLIN), date(2026, 12, 24)),
                     rdates=(datetime(2026, 12, 5, 8, tzinfo=BERLIN),),
                     valid_until=utc(2027, 2, 1))
    sch = IcsSchedule("lich-1@loaxa", "Tin tức sáng và chiều", rec, timedelta(minutes=15), 6)
    data = export_ics([sch], name="Xã An Bình")
    assert b"DTSTART;TZID=Europe/Berlin:20261201T060000" in data and b"BEGIN:VTIMEZONE" in data
    [back] = import_ics(data)
    assert (back.uid, back.summary, back.duration, back.priority) == (sch.uid, sch.summary, sch.duration, 6)
    window = (utc(2026, 11, 1), utc(2027, 6, 1))
    assert back.recurrence.occurrences(*window) == rec.occurrences(*window)
    assert len(rec.occurrences(*window)) == 2 * 18 - 1 - 2 + 1  # 18 weeks of Tue+Thu, minus exdates, plus RDATE

    google = b"\r\n".join([
        b"BEGIN:VCALENDAR", b"VERSION:2.0", b"PRODID:-//Google Inc//Google Calendar 70.9054//EN",
        b"BEGIN:VEVENT", b"DTSTART;TZID=Asia/Ho_Chi_Minh:20261207T063000",
        b"DTEND;TZID=Asia/Ho_Chi_Minh:20261207T070000",
        b"RRULE:FREQ=WEEKLY;WKST=MO;UNTIL=20261231T165959Z;BYDAY=MO", b"EXDATE;TZID=Asia/Ho_Chi_Minh:20261214T063000",
        b"UID:abc@google.com", "SUMMARY:Quốc ca và bản tin huyện".encode(), b"PRIORITY:1", b"END:VEVENT",
        b"END:VCALENDAR", b""])
    [ev] = import_ics(google)
    assert (ev.duration, ev.priority, ev.recurrence.tz) == (timedelta(minutes=30), 9, "Asia/Ho_Chi_Minh")
    assert [t.astimezone(HCM).day for t in ev.recurrence.occurrences(utc(2026, 12, 1), utc(2027, 1, 1))] == [
        7, 21, 28]
    floating = google.replace(b"DTSTART;TZID=Asia/Ho_Chi_Minh:", b"DTSTART:")
    with pytest.raises(IcsError, match=r"abc@google\.com.*floating"):
        import_ics(floating)
    with pytest.raises(IcsError, match="not an occurrence"):
        import_ics(google.replace(b"BYDAY=MO", b"BYDAY=TU"))


# ------------------------------------------------------------------ time input


def test_time_input_exact_or_refused() -> None:
    now = datetime(2026, 11, 25, 9, tzinfo=HCM)
    assert parse_time("hôm nay 17:00", now=now) == datetime(2026, 11, 25, 17, tzinfo=HCM)
    assert parse_time("Ngày mai 06:00", now=now) == datetime(2026, 11, 26, 6, tzinfo=HCM)
    assert parse_time("ngay mai 6h30", now=now) == datetime(2026, 11, 26, 6, 30, tzinfo=HCM)
    assert parse_time("tomorrow 06:00", now=now) == datetime(2026, 11, 26, 6, tzinfo=HCM)
    assert parse_time("2026-12-01T06:00+07:00") == datetime(2026, 12, 1, 6, tzinfo=HCM)
    assert parse_time("2026-12-01T06:00:00Z") == datetime(2026, 12, 1, 13, tzinfo=HCM)
    for text in ("Mon-Sat 06:00", "18:30", "sáng mai", "01/12/2026 06:00", "next monday", "today 24:00", ""):
        with pytest.raises(TimeInputError):
            parse_time(text, now=now)
    with pytest.raises(TimeInputError, match="UTC offset"):  # the API wants the offset
        parse_time("2026-12-01 06:00", allow_local=False)
    with pytest.raises(TimeInputError, match="does not exist"):
        parse_time("2026-03-29 02:30", "Europe/Berlin")
    with pytest.raises(TimeInputError, match="happens twice"):
        parse_time("2026-10-25 02:30", "Europe/Berlin")
    # with its offset it is exact (compared in UTC: Python never calls a fold time equal across zones)
    assert parse_time("2026-10-25T02:30+01:00", "Europe/Berlin").astimezone(UTC) == utc(2026, 10, 25, 1, 30)


# ------------------------------------------------------------------ the CLI's dry run


def test_loaxa_schedule_occurrences_is_a_dry_run_without_server_or_config() -> None:
    import json

    from tests.conftest import run_loaxa

    res = run_loaxa("schedule", "occurrences", "--rrule", "FREQ=DAILY;BYHOUR=6;BYMINUTE=0", "--tz", "Europe/Berlin",
                    "--dtstart", "2026-03-27T06:00+01:00", "--from", "2026-03-27T00:00+01:00",
                    "--to", "2026-03-31T00:00+02:00", "--exdate", "2026-03-28", "--json")
    assert res.returncode == 0, res.stderr
    # local 06:00 every day, the offset changes with the clocks on the 29th
    assert json.loads(res.stdout) == ["2026-03-27T06:00:00+01:00", "2026-03-29T06:00:00+02:00",
                                      "2026-03-30T06:00:00+02:00"]
    res = run_loaxa("schedule", "occurrences", "--rrule", "FREQ=WEEKLY;BYDAY=MO", "--dtstart", "Mon-Sat 06:00",
                    "--from", "2026-12-01T00:00+07:00", "--to", "2026-12-08T00:00+07:00", "--json")
    assert res.returncode == 2 and "--dtstart: cannot read the time 'Mon-Sat 06:00'" in res.stderr
    assert res.stdout == ""


def test_loaxa_schedule_occurrences_of_an_ics_file(tmp_path: Path) -> None:
    import json

    from tests.conftest import run_loaxa

    rec = Recurrence(dtstart=datetime(2026, 12, 7, 6, 30, tzinfo=HCM), rrule="FREQ=WEEKLY;BYDAY=MO;COUNT=4",
                     exdates=(datetime(2026, 12, 14, 6, 30, tzinfo=HCM),))
    path = tmp_path / "lich.ics"
    path.write_bytes(export_ics([IcsSchedule("quoc-ca@xa", "Quốc ca", rec, timedelta(minutes=2), 3)]))
    res = run_loaxa("schedule", "occurrences", "--ics", str(path), "--from", "2026-12-01 00:00",
                    "--to", "2027-01-01 00:00", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"quoc-ca@xa": ["2026-12-07T06:30:00+07:00", "2026-12-21T06:30:00+07:00",
                                                     "2026-12-28T06:30:00+07:00"]}
    path.write_bytes(path.read_bytes().replace(b"DTSTART;TZID=Asia/Ho_Chi_Minh:", b"DTSTART:"))
    res = run_loaxa("schedule", "occurrences", "--ics", str(path), "--from", "2026-12-01 00:00",
                    "--to", "2027-01-01 00:00")
    assert res.returncode == 2 and "quoc-ca@xa" in res.stderr and "floating" in res.stderr
