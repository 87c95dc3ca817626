"""Programmes and schedules in the scheduler's database, on SQLite and PostgreSQL (real servers)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from scheduler.db import BadRequest, NotFound, Store
from scheduler.models import Media
from scheduler.schedules.schemas import ProgrammeIn, ScheduleIn
from scheduler.schedules.store import ConflictError, ScheduleStore

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
NOW = int(datetime(2026, 11, 30, 12, tzinfo=HCM).timestamp() * 1000)
NEWS = "ab" * 32  # 10 minutes
ANTHEM = "cd" * 32  # 2 minutes
DAILY = "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR,SA;BYHOUR=6,17;BYMINUTE=0"


@pytest.fixture
def schedules(db_url: str) -> Iterator[ScheduleStore]:
    store = Store(db_url)
    store.upgrade()
    for sha, ms in ((NEWS, 600_000), (ANTHEM, 120_000)):
        store.add_media(Media(sha256=sha, size=1000, duration_ms=ms, content_type="audio/mpeg", path=f"{sha}.mp3",
                              original_name=None, created_at=NOW))
    store.record_speaker("xa-an-binh", "loa-cho", {"online": True}, NOW)
    store.record_speaker("xa-an-binh", "loa-ubnd", {"online": True}, NOW)
    yield ScheduleStore(store)
    store.close()


def programme(sch: ScheduleStore, *shas: str, text: str | None = None, text_ms: int | None = None) -> str:
    items = [{"media_sha256": s} for s in shas]
    if text is not None:
        items.append({"text": text, "duration_ms": text_ms})
    return sch.create_programme(ProgrammeIn.model_validate({"title": "Bản tin", "items": items}), "op", NOW)


def spec(pid: str, **kw: object) -> ScheduleIn:
    base: dict[str, object] = {"title": "Tin tức", "programme_id": pid, "rrule": DAILY,
                               "dtstart": "2026-12-01T06:00:00+07:00", "targets": ["xa-an-binh"]}
    return ScheduleIn.model_validate({**base, **kw})


def test_a_schedule_is_stored_with_its_zone_and_plays_its_rule(schedules: ScheduleStore) -> None:
    pid = programme(schedules, ANTHEM, NEWS, text="Thông báo lịch cắt điện", text_ms=30_000)
    assert schedules.programme(pid)["duration_ms"] == 750_000
    sid = schedules.create_schedule(spec(pid, priority="ưu tiên", exdates=["2026-12-02"], volume=60,
                                         rrule="rrule:freq=weekly;byday=mo,tu,we,th,fr,sa;byhour=6,17;byminute=0"),
                                    "op-an-binh", NOW)
    row = schedules.schedule(sid)
    assert (row["status"], row["priority"], row["level_vi"], row["tz"]) == ("draft", 6, "ưu tiên", "Asia/Ho_Chi_Minh")
    assert row["dtstart"] == "2026-12-01T06:00:00+07:00" and row["rrule"] == DAILY  # normalised
    got = schedules.occurrences(sid, datetime(2026, 12, 1, tzinfo=HCM), datetime(2026, 12, 4, tzinfo=HCM))
    assert [t.astimezone(HCM).strftime("%d %H") for t in got] == ["01 06", "01 17", "03 06", "03 17"]
    assert all(t.tzinfo is UTC for t in got)
    assert [r["id"] for r in schedules.list_schedules(status="draft")] == [sid]


def test_approval_and_editing_sends_it_back(schedules: ScheduleStore) -> None:
    pid = programme(schedules, NEWS)
    sid = schedules.create_schedule(spec(pid), "op", NOW)
    with pytest.raises(BadRequest, match="needs a reason"):
        schedules.set_status(sid, "rejected", "approver", NOW)
    with pytest.raises(BadRequest, match="changed"):
        schedules.set_status(sid, "approved", "approver", NOW, expected_version=7)
    assert schedules.set_status(sid, "approved", "approver", NOW, expected_version=1)["status"] == "approved"
    edited = schedules.update_schedule(sid, spec(pid, volume=40), "op", NOW + 1)
    assert (edited["status"], edited["version"], edited["status_reason"]) == ("draft", 2, "edited after being approved")
    rejected = schedules.set_status(sid, "rejected", "approver", NOW + 2, reason="sai giờ")
    assert (rejected["status"], rejected["status_reason"], rejected["status_by"]) == ("rejected", "sai giờ", "approver")
    schedules.remove_schedule(sid)
    with pytest.raises(NotFound):
        schedules.schedule(sid)


def test_equal_priority_overlap_is_refused_on_save_with_the_occurrences(schedules: ScheduleStore) -> None:
    news = programme(schedules, NEWS)  # 10 minutes
    first = schedules.create_schedule(spec(news), "op", NOW)
    # 06:05 on Mondays, on one speaker of the same commune: collides with the 06:00 news there
    clash = spec(news, title="Nhạc", rrule="FREQ=WEEKLY;BYDAY=MO;BYHOUR=6;BYMINUTE=5",
                 dtstart="2026-12-07T06:05:00+07:00", targets=["xa-an-binh/loa-cho"])
    with pytest.raises(ConflictError) as err:
        schedules.create_schedule(clash, "op", NOW)
    o = err.value.overlaps[0]
    assert o.first.schedule == first and o.second.schedule not in (first, None)
    assert o.first.start == datetime(2026, 12, 7, 6, tzinfo=HCM) and o.speakers == {"xa-an-binh/loa-cho"}
    assert "at 2026-12-07 06:00 +07" in str(err.value) and "conflict (equal priority)" in str(err.value)
    assert [s["id"] for s in schedules.list_schedules()] == [first]  # nothing saved
    # a higher level is no conflict (it pre-empts at play time); nor is an explicit order
    assert schedules.create_schedule(spec(news, **{**clash.model_dump(mode="json"), "priority": "khẩn cấp"}), "op", NOW)
    ordered = clash.model_dump(mode="json") | {"conflict_order": 2}
    schedules.update_schedule(first, spec(news, conflict_order=1), "op", NOW)
    assert schedules.create_schedule(ScheduleIn.model_validate(ordered), "op", NOW)
    # a different commune, or right after the news ends, is no conflict either
    assert schedules.create_schedule(spec(news, targets=["xa-tan-lap"]), "op", NOW)
    # (06:15 on Mondays: the 06:00 news ended at 06:10, the 06:05 music at 06:15)
    later = spec(news, rrule="FREQ=WEEKLY;BYDAY=MO;BYHOUR=6;BYMINUTE=15", dtstart="2026-12-07T06:15:00+07:00")
    assert schedules.create_schedule(later, "op", NOW)


def test_what_is_refused_names_the_field(schedules: ScheduleStore) -> None:
    pid = programme(schedules, NEWS)
    with pytest.raises(ValidationError, match="not an occurrence"):
        spec(pid, dtstart="2026-12-06T06:00:00+07:00")  # a Sunday
    with pytest.raises(ValidationError, match="dtstart"):
        spec(pid, dtstart="2026-12-01T06:00:00")  # no offset
    with pytest.raises(ValidationError, match="unknown"):
        spec(pid, tz="Asia/Saigon_City")
    with pytest.raises(ValidationError, match="priority"):
        spec(pid, priority="rất gấp")
    with pytest.raises(BadRequest, match=r"targets\[1\]"):
        schedules.create_schedule(spec(pid, targets=["xa-an-binh", "Xa An Binh"]), "op", NOW)
    with pytest.raises(BadRequest, match="programme_id"):
        schedules.create_schedule(spec("pg-none"), "op", NOW)
    with pytest.raises(BadRequest, match="not in the library"):
        programme(schedules, "ee" * 32)
    unsynthesised = programme(schedules, text="Chưa đọc")
    with pytest.raises(BadRequest, match="no known duration"):
        schedules.create_schedule(spec(unsynthesised), "op", NOW)
    with pytest.raises(ValidationError, match="either media_sha256 or text"):
        ProgrammeIn.model_validate({"title": "x", "items": [{"media_sha256": NEWS, "text": "y"}]})


def test_approved_schedules_of_a_commune_export_as_ics(schedules: ScheduleStore) -> None:
    from scheduler.schedules.ics import import_ics

    pid = programme(schedules, ANTHEM, NEWS)
    mine = schedules.create_schedule(spec(pid, exdates=["2026-12-25"]), "op", NOW)
    schedules.create_schedule(spec(pid, targets=["xa-tan-lap"]), "op", NOW)  # another commune
    draft = schedules.create_schedule(spec(pid, rrule=None, dtstart="2026-12-20T08:00:00+07:00", priority=9), "op", NOW)
    assert import_ics(schedules.export_ics("xa-an-binh")) == []  # nothing approved yet
    schedules.set_status(mine, "approved", "approver", NOW)
    [ev] = import_ics(schedules.export_ics("xa-an-binh"))
    assert (ev.uid, ev.duration, ev.priority) == (f"{mine}@loaxa", timedelta(minutes=12), 3)
    window = (datetime(2026, 12, 1, tzinfo=HCM), datetime(2027, 1, 1, tzinfo=HCM))
    assert ev.recurrence.occurrences(*window) == schedules.occurrences(mine, *window)
    days = {t.astimezone(HCM).date() for t in ev.recurrence.occurrences(*window)}
    assert len(days) == 31 - 4 - 1  # no Sundays, no Christmas
    uids = {e.uid for e in import_ics(schedules.export_ics("xa-an-binh", include_drafts=True))}
    assert uids == {f"{mine}@loaxa", f"{draft}@loaxa"}


def test_an_ics_file_becomes_drafts_all_or_nothing(schedules: ScheduleStore) -> None:
    pid = programme(schedules, NEWS)
    cal = "\r\n".join([
        "BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//Mozilla.org/NONSGML Mozilla Calendar V1.1//EN",
        "BEGIN:VEVENT", "UID:sang@xa", "SUMMARY:Bản tin sáng", "DTSTART;TZID=Asia/Ho_Chi_Minh:20261201T060000",
        "RRULE:FREQ=DAILY;COUNT=30", "EXDATE;TZID=Asia/Ho_Chi_Minh:20261205T060000", "END:VEVENT",
        "BEGIN:VEVENT", "UID:chieu@xa", "SUMMARY:Bản tin chiều", "DTSTART;TZID=Asia/Ho_Chi_Minh:20261201T170000",
        "RRULE:FREQ=DAILY;COUNT=30", "X-LOAXA-PRIORITY:6", "END:VEVENT", "END:VCALENDAR", ""]).encode()
    ids = schedules.import_ics(cal, programme_id=pid, targets=["xa-an-binh"], created_by="op", now=NOW)
    rows = {r["title"]: r for r in (schedules.schedule(i) for i in ids)}
    assert {t: (r["status"], r["priority"], r["exdates"]) for t, r in rows.items()} == {
        "Bản tin sáng": ("draft", 3, ["2026-12-05T06:00:00+07:00"]), "Bản tin chiều": ("draft", 6, [])}
    # the same morning slot again collides with the draft just imported: nothing of the file is saved
    again = cal.replace(b"sang@xa", b"sang-2@xa").replace(b"chieu@xa", b"chieu-2@xa").replace(
        b"20261201T170000", b"20261201T190000")
    with pytest.raises(ConflictError):
        schedules.import_ics(again, programme_id=pid, targets=["xa-an-binh/loa-cho"], created_by="op", now=NOW)
    assert len(schedules.list_schedules()) == 2
    with pytest.raises(BadRequest, match=r"sang@xa.*floating"):
        schedules.import_ics(cal.replace(b"DTSTART;TZID=Asia/Ho_Chi_Minh:20261201T060000", b"DTSTART:20261201T060000"),
                             programme_id=pid, targets=["xa-an-binh"], created_by="op", now=NOW)
