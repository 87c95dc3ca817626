"""The recurrence picker of *Lịch phát* (pure functions): the rule it writes plays exactly the times staff
chose (checked with python-dateutil and with the schedules package's own expansion), and reading the
rule back gives the same choices, so editing a schedule shows what was picked."""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from dateutil import rrule

from scheduler.schedules.recurrence import Recurrence
from scheduler.web.picker import Picker, PickerError, build, decode, parse_times

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
LO = datetime(2026, 12, 1, tzinfo=TZ)
HI = datetime(2026, 12, 29, tzinfo=TZ)


def wanted(days: set[int], times: list[time], first: date, last: date | None = None, count: int | None = None
           ) -> list[datetime]:
    """What staff mean, written out day by day without any rule."""
    out = []
    d = first
    while d < HI.date():
        if d.weekday() in days and (last is None or d <= last):
            out += [datetime.combine(d, t, tzinfo=TZ) for t in times]
        d += timedelta(days=1)
    return out[:count] if count else out


def expand(p: Picker) -> tuple[list[datetime], list[datetime]]:
    """(the schedules package's occurrences, python-dateutil's) of the picker's rule in [LO, HI)."""
    rule, dtstart, rdates = build(p, TZ)
    ours = Recurrence(dtstart=dtstart, tz=str(TZ), rrule=rule, rdates=tuple(rdates)).occurrences(LO, HI)
    if rule is None:
        theirs = [dtstart, *rdates]
    else:
        # a date UNTIL includes that whole local day (docs/schedules.md); dateutil reads it as its midnight
        naive = rrule.rrulestr(re.sub(r"UNTIL=(\d{8})$", r"UNTIL=\1T235959", rule),
                               dtstart=dtstart.replace(tzinfo=None))
        theirs = [t.replace(tzinfo=TZ) for t in naive.between(LO.replace(tzinfo=None), HI.replace(tzinfo=None),
                                                              inc=True)]
    return [t.astimezone(TZ) for t in ours], theirs


@pytest.mark.parametrize(("picker", "want"), [
    (Picker(kind="except_sunday", times=[time(6), time(17)], start=date(2026, 12, 6)),  # a Sunday: starts Monday
     wanted({0, 1, 2, 3, 4, 5}, [time(6), time(17)], date(2026, 12, 7))),
    (Picker(kind="daily", times=[time(5, 30)], start=date(2026, 12, 2), end="until", until=date(2026, 12, 10)),
     wanted(set(range(7)), [time(5, 30)], date(2026, 12, 2), last=date(2026, 12, 10))),
    (Picker(kind="weekdays", days=["MO", "TH"], times=[time(6), time(17, 30)], start=date(2026, 12, 1),
            end="count", count=5),
     wanted({0, 3}, [time(6), time(17, 30)], date(2026, 12, 1), count=5)),
    (Picker(kind="daily", times=[time(6, 15), time(11, 0), time(17, 45)], start=date(2026, 12, 1)),
     wanted(set(range(7)), [time(6, 15), time(11, 0), time(17, 45)], date(2026, 12, 1))),
    (Picker(kind="once", times=[time(6), time(17)], start=date(2026, 12, 3)),
     wanted({3}, [time(6), time(17)], date(2026, 12, 3), last=date(2026, 12, 3))),
])
def test_the_rule_plays_exactly_the_chosen_times(picker: Picker, want: list[datetime]) -> None:
    ours, theirs = expand(picker)
    assert ours == want
    assert theirs == want


def test_the_except_sunday_rule_is_the_one_of_the_docs() -> None:
    rule, dtstart, rdates = build(Picker(kind="except_sunday", times=parse_times("06:00, 17:00"),
                                         start=date(2026, 12, 1)), TZ)
    assert rule == "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR,SA;BYHOUR=6,17;BYMINUTE=0"
    assert dtstart == datetime(2026, 12, 1, 6, 0, tzinfo=TZ) and rdates == []


@pytest.mark.parametrize("picker", [
    Picker(kind="except_sunday", times=[time(6), time(17)], start=date(2026, 12, 1)),
    Picker(kind="daily", times=[time(6, 15), time(17, 30)], start=date(2026, 12, 1), end="until",
           until=date(2027, 1, 31)),
    Picker(kind="weekdays", days=["TU", "SA"], times=[time(19)], start=date(2026, 12, 1), end="count", count=8),
    Picker(kind="once", times=[time(6), time(17)], start=date(2026, 12, 1)),
])
def test_reading_the_rule_back_gives_the_same_choices(picker: Picker) -> None:
    rule, dtstart, rdates = build(picker, TZ)
    back = decode(rule, dtstart, rdates)
    assert (back.kind, back.weekdays(), back.times, back.end, back.until, back.count) == \
        (picker.kind, picker.weekdays(), picker.times, picker.end, picker.until, picker.count)


def test_a_rule_the_picker_cannot_say_is_kept_as_text() -> None:
    back = decode("FREQ=MONTHLY;BYDAY=1MO;BYHOUR=8;BYMINUTE=0", datetime(2026, 12, 7, 8, tzinfo=TZ), [])
    assert back.kind == "custom" and back.custom_rrule == "FREQ=MONTHLY;BYDAY=1MO;BYHOUR=8;BYMINUTE=0"


def test_times_are_read_the_way_offices_write_them() -> None:
    assert parse_times("6h, 17h30; 06:00 11.15") == [time(6), time(11, 15), time(17, 30)]
    for bad in ("", "25:00", "sáng", "6:75"):
        with pytest.raises(PickerError) as err:
            parse_times(bad)
        assert err.value.field == "times"


def test_choices_that_make_no_rule_name_their_field() -> None:
    with pytest.raises(PickerError) as err:
        build(Picker(kind="weekdays", days=[], start=date(2026, 12, 1)), TZ)
    assert err.value.field == "days"
    with pytest.raises(PickerError) as err:
        build(Picker(kind="daily", start=date(2026, 12, 10), end="until", until=date(2026, 12, 1)), TZ)
    assert err.value.field == "until"
    with pytest.raises(PickerError) as err:
        build(Picker(kind="daily", start=date(2026, 12, 10), end="count", count=0), TZ)
    assert err.value.field == "count"
