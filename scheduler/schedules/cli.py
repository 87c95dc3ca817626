"""``loaxa schedule …``, ``loaxa programme …`` and ``loaxa report …``: schedules, programmes and the
as-run report through the scheduler's HTTP API (signed in like ``loaxa broadcast``: ``LOAXA_TOKEN``,
``--token-file`` or ``--login``). ``loaxa schedule occurrences`` with ``--rrule`` is a dry run: no
stored schedule, no server, no config needed."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

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
    o.add_argument("schedule_id", nargs="?", help="a stored schedule (asks the scheduler; then --url/--login apply)")
    _common(o, json_flag=False)
    o.set_defaults(func=run_occurrences)
    s.set_defaults(func=lambda _a: (s.print_help(), 2)[1])
    _register_api(sub, ssub)


def run_occurrences(args: argparse.Namespace) -> int:
    if args.schedule_id:
        return _api_occurrences(args)
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


# ------------------------------------------------------------ through the scheduler's API

ADD_HELP = """\
Save a schedule as a draft: it is sent to gateways only once an approver of its communes approves it
(`loaxa schedule approve ID`). A schedule of equal level that overlaps another one on a speaker is
refused with the occurrences that collide; choose another time or level, or give both a
--conflict-order.

Times: ISO 8601 with offset, a full local date and time in --tz, or today/tomorrow/hôm nay/ngày mai HH:MM.

Example: the morning and evening news, Monday to Saturday, in An Bình:
  loaxa schedule add --title "Bản tin thời sự" --programme pg-… --target xa-an-binh \\
      --rrule "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR,SA;BYHOUR=6,17;BYMINUTE=0" --dtstart "ngày mai 06:00"
"""


FEED_HELP = """\
Print a URL that calendar programs (Google Calendar, Thunderbird, a phone) can subscribe to: the
commune's approved schedules, read-only, with no token. The URL is signed; it works until it
expires (--days) or until the commune's URLs are revoked (--rotate gives a new one and revokes the
old ones, --revoke only revokes). Anyone who has the URL can read the commune's approved schedules,
so share it like a password. Needs feed:admin on the commune (approvers, admins).

Examples:
  loaxa schedule feed-url xa-an-binh --login chutich-anbinh
  loaxa schedule feed-url xa-an-binh --days 90 --rotate     # after a phone with the old URL was lost
  loaxa schedule feed-url xa-an-binh --revoke
"""


def _common(p: argparse.ArgumentParser, json_flag: bool = True) -> None:
    p.add_argument("--url", help="scheduler HTTP address (default: $LOAXA_URL, or from --config)")
    p.add_argument("--config", type=Path, help="a scheduler YAML config, only to find its address")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--token-file", type=Path, help="file holding an API token (default: $LOAXA_TOKEN)")
    auth.add_argument("--login", help="sign in as this account (password: $LOAXA_PASSWORD or a prompt)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print JSON")


def _register_api(sub: argparse._SubParsersAction, ssub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    a = ssub.add_parser("add", help="save a schedule (a draft until approved)", description=ADD_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _schedule_args(a)
    a.add_argument("--approve-now", action="store_true",
                   help="emergency level only: approve at once (needs schedule:emergency; audited)")
    a.set_defaults(func=_wrap(run_add))
    e = ssub.add_parser("edit", help="replace a schedule (an approved one goes back to draft)")
    e.add_argument("schedule_id")
    _schedule_args(e)
    e.set_defaults(func=_wrap(run_edit))
    ls = ssub.add_parser("list", help="schedules of your communes")
    ls.add_argument("--status", choices=["draft", "approved", "rejected"])
    _common(ls)
    ls.set_defaults(func=_wrap(run_list))
    for name, helptext in (("show", "one schedule"), ("remove", "remove a schedule (its coming plans are cancelled)")):
        c = ssub.add_parser(name, help=helptext)
        c.add_argument("schedule_id")
        _common(c)
        c.set_defaults(func=_wrap(run_show if name == "show" else run_remove))
    ap = ssub.add_parser("approve", help="approve a schedule (approvers of its communes)")
    ap.add_argument("schedule_id")
    ap.add_argument("--version", type=int, help="the version you reviewed (refused if it changed since)")
    _common(ap)
    ap.set_defaults(func=_wrap(run_approve))
    rj = ssub.add_parser("reject", help="reject a schedule with a reason")
    rj.add_argument("schedule_id")
    rj.add_argument("--reason", required=True, help="why (shown to the operator)")
    _common(rj)
    rj.set_defaults(func=_wrap(run_reject))
    ex = ssub.add_parser("export-ics", help="a commune's approved schedules as an iCalendar file")
    ex.add_argument("--commune", required=True, metavar="GATEWAY", help="the commune's gateway id")
    ex.add_argument("-o", "--output", type=Path, help="write here (default: standard output)")
    _common(ex, json_flag=False)
    ex.set_defaults(func=_wrap(run_export))
    fu = ssub.add_parser("feed-url", help="a signed ICS feed URL for calendar programs (no token needed)",
                         description=FEED_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    fu.add_argument("commune", metavar="COMMUNE", help="the commune's gateway id")
    fu.add_argument("--days", type=int, default=365, help="how long the URL works (1-1825, default 365)")
    what = fu.add_mutually_exclusive_group()
    what.add_argument("--rotate", action="store_true",
                      help="revoke every URL given out before for this commune, then print a new one")
    what.add_argument("--revoke", action="store_true", help="revoke every URL of this commune (prints none)")
    _common(fu)
    fu.set_defaults(func=_wrap(run_feed_url))
    im = ssub.add_parser("import-ics", help="drafts from the events of an .ics file")
    im.add_argument("file", type=Path)
    im.add_argument("--programme", required=True, help="the programme every event plays")
    im.add_argument("--target", action="append", required=True, dest="targets", metavar="GW[/DEV|/@GROUP]")
    im.add_argument("--volume", type=int, default=70)
    _common(im)
    im.set_defaults(func=_wrap(run_import))

    p = sub.add_parser("programme", help="programmes: ordered lists of audio a schedule plays",
                       description="Programmes: an ordered list of items (audio files, or text read aloud).")
    psub = p.add_subparsers(title="programme commands", metavar="ACTION")
    pa = psub.add_parser("add", help="make a programme from items in order",
                         description="Items in playing order: --item file:PATH (uploaded), --item media:SHA256 "
                                     "(already in the library) or --item 'text:…' (read aloud, made into audio now).")
    pa.add_argument("--title", required=True)
    pa.add_argument("--item", action="append", required=True, dest="items", metavar="KIND:VALUE")
    _common(pa)
    pa.set_defaults(func=_wrap(run_programme_add))
    pl = psub.add_parser("list", help="programmes")
    _common(pl)
    pl.set_defaults(func=_wrap(run_programme_list))
    for name in ("show", "remove"):
        c = psub.add_parser(name, help=f"{name} a programme")
        c.add_argument("programme_id")
        _common(c)
        c.set_defaults(func=_wrap(run_programme_show if name == "show" else run_programme_remove))
    p.set_defaults(func=lambda _a: (p.print_help(), 2)[1])

    r = sub.add_parser("report", help="as-run log and monthly summary", description="What played, per speaker.")
    rsub = r.add_subparsers(title="report commands", metavar="ACTION")
    ar = rsub.add_parser("as-run", help="per broadcast and speaker what played, in a date range")
    ar.add_argument("--from", dest="start", required=True, help="range start (a date 2026-12-01 or a time)")
    ar.add_argument("--to", dest="end", required=True, help="range end, excluded (a date or a time)")
    ar.add_argument("--commune", action="append", metavar="GATEWAY", help="only these communes (repeatable)")
    ar.add_argument("--state", action="append",
                    choices=["pending", "delivered", "started", "finished", "failed", "preempted", "skipped"])
    ar.add_argument("--schedule", help="only this schedule's occurrences")
    ar.add_argument("--csv", action="store_true", help="CSV for a spreadsheet")
    _common(ar)
    ar.set_defaults(func=_wrap(run_as_run))
    mo = rsub.add_parser("monthly", help="per commune: hours broadcast, share of speakers that played each item")
    mo.add_argument("--month", required=True, help="YYYY-MM")
    mo.add_argument("--commune", action="append", metavar="GATEWAY")
    _common(mo)
    mo.set_defaults(func=_wrap(run_monthly))
    r.set_defaults(func=lambda _a: (r.print_help(), 2)[1])


def _schedule_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--title", required=True)
    p.add_argument("--programme", required=True, help="programme id (loaxa programme list)")
    p.add_argument("--target", action="append", required=True, dest="targets", metavar="GW[/DEV|/@GROUP]",
                   help="a commune's gateway, one speaker of it, or a speaker group of it (GW/@GROUP); "
                        "repeatable")
    p.add_argument("--rrule", help="RFC 5545 rule (none: once at --dtstart); check it with `schedule occurrences`")
    p.add_argument("--dtstart", required=True, help="the first occurrence")
    p.add_argument("--tz", default=None, help="IANA zone the rule is read in (default Asia/Ho_Chi_Minh)")
    p.add_argument("--exdate", action="append", default=[], metavar="DATE|TIME")
    p.add_argument("--rdate", action="append", default=[], metavar="TIME")
    p.add_argument("--valid-from")
    p.add_argument("--valid-until")
    p.add_argument("--level", default="normal",
                   help="thông thường / ưu tiên / khẩn cấp (normal / priority / emergency) or 0-9")
    p.add_argument("--volume", type=int, default=70)
    p.add_argument("--conflict-order", type=int, help="explicit order among equal levels (lower plays)")
    _common(p)


def _wrap(fn: Any) -> Any:
    """The broadcast CLI's error handling: a CliError is one line on stderr and exit code 2."""
    from scheduler.cli import _handle

    return _handle(fn)


def _raw(api: Any, method: str, path: str, **kw: Any) -> bytes:
    """Like ``Api.call`` for answers that are not JSON (ICS, CSV, 204)."""
    import httpx

    from scheduler.cli import CliError

    try:
        resp = api.client.request(method, path, **kw)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the scheduler at {api.base} ({exc})") from exc
    if resp.status_code >= 400:
        try:
            detail = resp.json().get("detail")
        except ValueError:
            detail = resp.text[:300]
        raise CliError(f"{method} {path}: HTTP {resp.status_code}: {detail}")
    return bytes(resp.content)


def _time(text: str, tz: str, what: str) -> str:
    from scheduler.cli import CliError
    from scheduler.schedules.recurrence import RecurrenceError
    from scheduler.schedules.timeinput import TimeInputError, parse_time

    try:
        return parse_time(text, tz).isoformat()
    except (TimeInputError, RecurrenceError) as exc:
        raise CliError(f"{what}: {exc}") from exc


def _schedule_body(args: argparse.Namespace, api: Any) -> dict[str, Any]:
    import re

    tz = args.tz or api.timezone
    body: dict[str, Any] = {
        "title": args.title, "programme_id": args.programme, "targets": args.targets, "rrule": args.rrule,
        "tz": tz, "dtstart": _time(args.dtstart, tz, "--dtstart"),
        "exdates": [x.strip() if re.fullmatch(r"\d{4}-\d{2}-\d{2}", x.strip()) else _time(x, tz, "--exdate")
                    for x in args.exdate],
        "rdates": [_time(x, tz, "--rdate") for x in args.rdate],
        "valid_from": _time(args.valid_from, tz, "--valid-from") if args.valid_from else None,
        "valid_until": _time(args.valid_until, tz, "--valid-until") if args.valid_until else None,
        "priority": args.level, "volume": args.volume, "conflict_order": args.conflict_order,
    }
    return body


def _print_schedule(sc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(sc, ensure_ascii=False, indent=2))
        return
    print(f"schedule {sc['id']}  \"{sc['title']}\"  [{sc['status']}, version {sc['version']}]")
    print(f"  programme {sc['programme_id']}; level {sc['level_vi']} ({sc['priority']}); volume {sc['volume']}; "
          f"targets {' '.join(sc['targets'])}")
    print(f"  rule {sc['rrule'] or '(once)'} from {sc['dtstart']} in {sc['tz']}")
    if sc["exdates"] or sc["rdates"]:
        print(f"  skipped {', '.join(sc['exdates']) or '-'}; extra {', '.join(sc['rdates']) or '-'}")
    if sc.get("status_reason"):
        print(f"  {sc['status']} by {sc['status_by']}: {sc['status_reason']}")


def run_add(args: argparse.Namespace) -> int:
    from scheduler.cli import Api

    api = Api(args)
    body = {**_schedule_body(args, api), "approve_now": args.approve_now}
    sc = api.call("POST", "/api/schedules", json=body)
    _print_schedule(sc, args.json)
    if not args.json and sc["status"] == "draft":
        print(f"an approver of {', '.join(sorted({t.split('/')[0] for t in sc['targets']}))} approves it with: "
              f"loaxa schedule approve {sc['id']} --version {sc['version']}")
    return 0


def run_edit(args: argparse.Namespace) -> int:
    from scheduler.cli import Api

    api = Api(args)
    _print_schedule(api.call("PUT", f"/api/schedules/{args.schedule_id}", json=_schedule_body(args, api)), args.json)
    return 0


def run_list(args: argparse.Namespace) -> int:
    from scheduler.cli import Api, _table

    rows = Api(args).call("GET", "/api/schedules", params={"status": args.status} if args.status else None)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    print(_table([[r["id"], r["status"], r["level_vi"], r["title"][:40], r["rrule"] or "(once)",
                   " ".join(r["targets"])[:40]] for r in rows],
                 ["ID", "STATUS", "LEVEL", "TITLE", "RULE", "TARGETS"]))
    return 0


def run_show(args: argparse.Namespace) -> int:
    from scheduler.cli import Api

    _print_schedule(Api(args).call("GET", f"/api/schedules/{args.schedule_id}"), args.json)
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from scheduler.cli import Api

    _raw(Api(args), "DELETE", f"/api/schedules/{args.schedule_id}")
    print(f"schedule {args.schedule_id} removed; its plans still to come were cancelled")
    return 0


def run_approve(args: argparse.Namespace) -> int:
    from scheduler.cli import Api

    body = {"version": args.version} if args.version else {}
    _print_schedule(Api(args).call("POST", f"/api/schedules/{args.schedule_id}/approve", json=body), args.json)
    return 0


def run_reject(args: argparse.Namespace) -> int:
    from scheduler.cli import Api

    sc = Api(args).call("POST", f"/api/schedules/{args.schedule_id}/reject", json={"reason": args.reason})
    _print_schedule(sc, args.json)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from scheduler.cli import Api, CliError

    data = _raw(Api(args), "GET", f"/api/communes/{args.commune}/schedules.ics")
    if args.output is None:
        sys.stdout.write(data.decode())
        return 0
    try:
        args.output.write_bytes(data)
    except OSError as exc:
        raise CliError(f"{args.output}: {exc.strerror}") from exc
    print(f"wrote {args.output}")
    return 0


def run_feed_url(args: argparse.Namespace) -> int:
    from scheduler.cli import Api

    api = Api(args)
    if args.revoke:
        out = api.call("POST", f"/api/communes/{args.commune}/feed-url/revoke")
        if args.json:
            print(json.dumps(out))
        else:
            print(f"every feed URL of {args.commune} is revoked" if out["revoked"]
                  else f"{args.commune} had no feed URL")
        return 0
    out = api.call("POST", f"/api/communes/{args.commune}/feed-url", json={"days": args.days, "rotate": args.rotate})
    if args.json:
        print(json.dumps(out))
        return 0
    until = datetime.fromtimestamp(out["expires_at"] / 1000).astimezone()
    print(out["url"])
    print(f"works until {until:%Y-%m-%d} without a token; treat it like a password "
          f"(revoke: loaxa schedule feed-url {args.commune} --revoke)", file=sys.stderr)
    return 0


def run_import(args: argparse.Namespace) -> int:
    from scheduler.cli import Api, CliError

    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise CliError(f"{args.file}: {exc.strerror}") from exc
    out = Api(args).call("POST", "/api/schedules/import", content=data,
                         params={"programme_id": args.programme, "targets": args.targets, "volume": args.volume},
                         headers={"Content-Type": "text/calendar"})
    print(json.dumps(out) if args.json else f"{len(out['schedules'])} draft(s): {' '.join(out['schedules'])}")
    return 0


def _api_occurrences(args: argparse.Namespace) -> int:
    from scheduler.cli import Api

    api = Api(args)
    tz = args.tz or api.timezone
    times = api.call("GET", f"/api/schedules/{args.schedule_id}/occurrences",
                     params={"from": _time(args.start, tz, "--from"), "to": _time(args.end, tz, "--to")})
    if args.json:
        print(json.dumps(times))
    else:
        for t in times:
            print(t)
        print(f"{len(times)} occurrence(s)")
    return 0


def run_programme_add(args: argparse.Namespace) -> int:
    from scheduler.cli import Api, CliError

    api = Api(args)
    items: list[dict[str, Any]] = []
    for n, spec in enumerate(args.items, 1):
        kind, sep, value = spec.partition(":")
        if not sep or not value.strip():
            raise CliError(f"--item {n} {spec!r}: write file:PATH, media:SHA256 or text:WORDS")
        if kind == "file":
            path = Path(value)
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise CliError(f"--item {n}: {path}: {exc.strerror}") from exc
            media = api.call("POST", "/api/media", params={"name": path.name}, content=data,
                             headers={"Content-Type": "application/octet-stream"})
        elif kind == "media":
            media = api.call("GET", f"/api/media/{value.strip()}")
        elif kind == "text":
            media = api.call("POST", "/api/tts", json={"text": value})
        else:
            raise CliError(f"--item {n} {spec!r}: the kind is file, media or text, not {kind!r}")
        items.append({"media_sha256": media["sha256"]})
    pg = api.call("POST", "/api/programmes", json={"title": args.title, "items": items})
    _print_programme(pg, args.json)
    return 0


def _print_programme(pg: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(pg, ensure_ascii=False, indent=2))
        return
    total = pg["duration_ms"]
    print(f"programme {pg['id']}  \"{pg['title']}\"  ({total / 1000:.1f} s)" if total else f"programme {pg['id']}")
    for i in pg["items"]:
        what = i["media_sha256"] or f"text: {i['text'][:60]}"
        length = f"{i['duration_ms'] / 1000:.1f} s" if i["duration_ms"] else "?"
        print(f"  {i['position'] + 1}. {what}  ({length})")


def run_programme_list(args: argparse.Namespace) -> int:
    from scheduler.cli import Api, _table

    rows = Api(args).call("GET", "/api/programmes")
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    print(_table([[r["id"], r["title"][:50], str(len(r["items"])),
                   f"{r['duration_ms'] / 1000:.0f} s" if r["duration_ms"] else "?"] for r in rows],
                 ["ID", "TITLE", "ITEMS", "LENGTH"]))
    return 0


def run_programme_show(args: argparse.Namespace) -> int:
    from scheduler.cli import Api

    _print_programme(Api(args).call("GET", f"/api/programmes/{args.programme_id}"), args.json)
    return 0


def run_programme_remove(args: argparse.Namespace) -> int:
    from scheduler.cli import Api

    _raw(Api(args), "DELETE", f"/api/programmes/{args.programme_id}")
    print(f"programme {args.programme_id} removed")
    return 0


def _day_or_time(text: str, tz: str, what: str) -> str:
    import re

    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
        text = f"{text.strip()} 00:00"
    return _time(text, tz, what)


def run_as_run(args: argparse.Namespace) -> int:
    from scheduler.cli import Api, _table

    api = Api(args)
    tz = api.timezone
    params: dict[str, Any] = {"from": _day_or_time(args.start, tz, "--from"), "to": _day_or_time(args.end, tz, "--to")}
    if args.commune:
        params["gateway"] = args.commune
    if args.state:
        params["state"] = args.state
    if args.schedule:
        params["schedule_id"] = args.schedule
    if args.csv:
        sys.stdout.write(_raw(api, "GET", "/api/reports/as-run", params={**params, "format": "csv"}).decode())
        return 0
    rows = api.call("GET", "/api/reports/as-run", params=params)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    print(_table([[r["start_at"][:16].replace("T", " "), (r["title"] or r["broadcast_id"])[:36], r["gateway"],
                   r["device"], r["state"], (r["reason"] or "")[:40]] for r in rows],
                 ["START", "ITEM", "COMMUNE", "SPEAKER", "STATE", "REASON"]))
    return 0


def run_monthly(args: argparse.Namespace) -> int:
    from scheduler.cli import Api

    params: dict[str, Any] = {"month": args.month}
    if args.commune:
        params["gateway"] = args.commune
    rows = Api(args).call("GET", "/api/reports/monthly", params=params)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    for g in rows:
        print(f"{g['commune'] or g['gateway']} ({g['gateway']}), {g['month']}: {g['hours_broadcast']} h broadcast, "
              f"{g['broadcasts_played']}/{g['broadcasts']} broadcasts played")
        for i in g["items"]:
            print(f"  {i['title'][:50]}: {i['share_played']:.0%} of speakers ({i['speaker_plays']}/"
                  f"{i['speaker_targets']}) over {i['broadcasts']} broadcast(s)")
    return 0
