"""``loaxa schedule occurrences``: check a recurrence rule before saving it (a dry run: no stored
schedule, no server, no config needed)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

OCCURRENCES_HELP = """\
Print when a schedule would play: the start instants of an RFC 5545 rule between --from and --to,
in local wall time of --tz (default Asia/Ho_Chi_Minh), with daylight-saving changes applied the
way calendar programs do. Nothing is stored and no server is needed.

Times: ISO 8601 with offset (2026-12-01T06:00+07:00), a full local date and time in --tz
(2026-12-01 06:00), or today/tomorrow/hôm nay/ngày mai HH:MM.

Examples:
  # news at 06:00 and 17:00 every day except Sunday, for a week
  loaxa schedule occurrences --rrule "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR,SA;BYHOUR=6,17;BYMINUTE=0" \\
      --dtstart 2026-12-01T06:00+07:00 --from 2026-12-01T00:00+07:00 --to 2026-12-08T00:00+07:00 --json
  # what an .ics file from a calendar program would play in January
  loaxa schedule occurrences --ics lich-phat.ics --from 2027-01-01T00:00+07:00 --to 2027-02-01T00:00+07:00
  # the same, skipping New Year's Day and adding one Sunday
  loaxa schedule occurrences --rrule "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR,SA;BYHOUR=6,17;BYMINUTE=0" \\
      --dtstart "2026-12-01 06:00" --from "2026-12-28 00:00" --to "2027-01-05 00:00" \\
      --exdate 2027-01-01 --rdate 2027-01-03T08:00+07:00
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    s = sub.add_parser("schedule", help="recurring schedules (check a rule: schedule occurrences)",
                       description="Recurring schedules.")
    ssub = s.add_subparsers(title="schedule commands", metavar="ACTION")
    o = ssub.add_parser("occurrences", help="when a rule plays (dry run, no server)", description=OCCURRENCES_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    o.add_argument("--rrule", help="RFC 5545 RRULE, e.g. FREQ=DAILY;BYHOUR=6,17;BYMINUTE=0 (none: once at --dtstart)")
    o.add_argument("--dtstart", help="the first occurrence (required unless --ics)")
    o.add_argument("--ics", type=Path, metavar="FILE",
                   help="instead of --rrule/--dtstart: every event of an iCalendar file (JSON: an object by UID)")
    o.add_argument("--from", dest="start", required=True, help="window start (included)")
    o.add_argument("--to", dest="end", required=True, help="window end (excluded)")
    o.add_argument("--tz", default=None, help="IANA time zone of the rule (default Asia/Ho_Chi_Minh)")
    o.add_argument("--exdate", action="append", default=[], metavar="DATE|TIME",
                   help="skip this occurrence (a time) or every occurrence on this local date; repeatable")
    o.add_argument("--rdate", action="append", default=[], metavar="TIME", help="an extra occurrence; repeatable")
    o.add_argument("--valid-from", help="play nothing before this")
    o.add_argument("--valid-until", help="play nothing from this on")
    o.add_argument("--json", action="store_true", help="print a JSON list of ISO 8601 times with offset")
    o.set_defaults(func=run_occurrences)
    s.set_defaults(func=lambda _a: (s.print_help(), 2)[1])


def run_occurrences(args: argparse.Namespace) -> int:
    import re
    from datetime import date

    from scheduler.schedules.recurrence import DEFAULT_TZ, Recurrence, RecurrenceError, zone
    from scheduler.schedules.timeinput import TimeInputError, parse_time

    tz_name = args.tz or DEFAULT_TZ
    try:
        tz = zone(tz_name)

        def when(text: str, what: str) -> datetime:
            try:
                return parse_time(text, tz_name)
            except TimeInputError as exc:
                raise RecurrenceError(f"{what}: {exc}") from exc

        if args.ics is not None:
            return _ics_occurrences(args, when(args.start, "--from"), when(args.end, "--to"))
        if not args.dtstart:
            raise RecurrenceError("--dtstart is required (or give --ics FILE)")
        exdates: list[datetime | date] = []
        for x in args.exdate:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", x.strip()):
                try:
                    exdates.append(date.fromisoformat(x.strip()))
                except ValueError as exc:
                    raise RecurrenceError(f"--exdate {x!r}: {exc}") from exc
            else:
                exdates.append(when(x, "--exdate"))
        rec = Recurrence(
            dtstart=when(args.dtstart, "--dtstart"),
            tz=tz_name,
            rrule=args.rrule,
            exdates=tuple(exdates),
            rdates=tuple(when(r, "--rdate") for r in args.rdate),
            valid_from=when(args.valid_from, "--valid-from") if args.valid_from else None,
            valid_until=when(args.valid_until, "--valid-until") if args.valid_until else None,
        )
        found = rec.occurrences(when(args.start, "--from"), when(args.end, "--to"))
    except RecurrenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    local = [t.astimezone(tz) for t in found]
    if args.json:
        print(json.dumps([t.isoformat() for t in local]))
    else:
        for t in local:
            print(f"{t:%a %Y-%m-%d %H:%M} {tz_name}   ({t.isoformat()})")
        print(f"{len(local)} occurrence(s)")
    return 0


def _ics_occurrences(args: argparse.Namespace, start: datetime, end: datetime) -> int:
    from scheduler.schedules.ics import MAX_ICS_BYTES, IcsError, import_ics
    from scheduler.schedules.recurrence import RecurrenceError

    try:
        with open(args.ics, "rb") as f:
            data = f.read(MAX_ICS_BYTES + 1)
        events = import_ics(data)
        found = {ev.uid: (ev, ev.recurrence.occurrences(start, end)) for ev in events}
    except OSError as exc:
        print(f"error: {args.ics}: {exc.strerror}", file=sys.stderr)
        return 2
    except (IcsError, RecurrenceError) as exc:
        print(f"error: {args.ics}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({uid: [t.astimezone(ev.recurrence.zoneinfo).isoformat() for t in times]
                          for uid, (ev, times) in found.items()}, ensure_ascii=False))
        return 0
    for uid, (ev, times) in found.items():
        print(f"{ev.summary or uid}  ({uid}, {ev.recurrence.tz}, {len(times)} occurrence(s))")
        for t in times:
            local = t.astimezone(ev.recurrence.zoneinfo)
            print(f"  {local:%a %Y-%m-%d %H:%M}   ({local.isoformat()})")
    return 0
