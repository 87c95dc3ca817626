"""``loaxa scheduler run`` and ``loaxa broadcast now|at|cancel|status|list``.

The broadcast commands talk to the RUNNING scheduler over its HTTP API, so a new broadcast is
published the moment it is created and there is one writer of the database. They need no config
file and no signing key: the address comes from ``--url`` (or ``LOAXA_URL``, or a scheduler config
given with ``--config``), and the caller signs in with an API token (``LOAXA_TOKEN`` or
``--token-file``) or an account (``--login``, password from ``LOAXA_PASSWORD`` or a prompt). The
scheduler checks the caller's role and communes and records who asked.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

RUN_HELP = """\
Run the central scheduler: the MQTT dispatcher (sends signed broadcast plans to gateways, re-sends
them until acknowledged, tracks playback per speaker) and the HTTP server (media for gateways, JSON
API with OpenAPI at /docs). Stop with Ctrl-C or SIGTERM.
"""

NOW_HELP = """\
Broadcast an audio file (or a text read aloud in Vietnamese) right away.

Targets are GATEWAY (every speaker of that commune's gateway), GATEWAY/DEVICE (one speaker) or
GATEWAY/@GROUP (a speaker group, "cụm loa", of that commune: `loaxa groups list`); give as many as
you like. A group is read when the broadcast is made; the broadcast records which speakers it meant.
Priority: normal (daily programme), priority (important notice), emergency (storm, flood, fire:
interrupts anything else playing).

Example:
  LOAXA_URL=https://loaxa.example.gov.vn loaxa broadcast now --login chutich-anbinh --media thong-bao.mp3 \\
      --targets xa-an-binh xa-an-binh/loa-cho --priority emergency
"""

AT_HELP = """\
Schedule a broadcast at TIME: "today 18:30", "tomorrow 06:00", "hôm nay 18:30", "ngày mai 06:00",
a full local date and time "2026-12-01 06:00" (in the scheduler's time zone, Asia/Ho_Chi_Minh unless
configured otherwise), or ISO 8601 with its offset ("2026-12-01T06:00+07:00"). Anything else is
refused, never guessed: "18:30" alone, "01/12/2026", "Mon-Sat 06:00" (a repeating time is a schedule).
A time in the past is refused.
"""

STATUS_HELP = """\
Show what happened to a broadcast on every speaker: pending (not yet at the gateway), delivered
(the gateway has it), started, finished, failed, preempted (cut off by a more urgent broadcast),
skipped (cancelled or not played). Times are local. Exit code 0 when every speaker finished.
"""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="scheduler HTTP address (default: $LOAXA_URL, or from --config)")
    p.add_argument("--config", type=Path, help="a scheduler YAML config, only to find its address")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--token-file", type=Path, help="file holding an API token (default: $LOAXA_TOKEN)")
    auth.add_argument("--login", help="sign in as this account (password: $LOAXA_PASSWORD or a prompt)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_create(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--media", type=Path, help="audio file to broadcast (MP3, WAV, OGG, M4A, FLAC …)")
    src.add_argument("--text", help="Vietnamese text to read aloud instead of an audio file")
    src.add_argument("--sha256", help="audio already in the library (its SHA-256)")
    p.add_argument(
        "--targets",
        nargs="+",
        required=True,
        metavar="GW[/DEV|/@GROUP]",
        help="GATEWAY (all its speakers), GATEWAY/DEVICE or GATEWAY/@GROUP (a speaker group)",
    )
    p.add_argument("--priority", choices=["normal", "priority", "emergency"], default="normal")
    p.add_argument("--volume", type=int, default=70, help="0-100 (default 70)")
    p.add_argument("--repeat", type=int, default=1, help="play this many times (default 1)")
    p.add_argument("--title", help="a short title shown in reports")
    p.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="then wait up to SECONDS for every speaker to finish and show the status (exit 0 if all played)",
    )


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    s = sub.add_parser(
        "scheduler",
        help="run the central scheduler",
        description="The central scheduler (dispatcher + HTTP API).",
    )
    ssub = s.add_subparsers(title="scheduler commands", metavar="ACTION")
    r = ssub.add_parser(
        "run",
        help="run the dispatcher and the HTTP server",
        description=RUN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("--config", type=Path, required=True, help="the scheduler's YAML config")
    r.set_defaults(func=run_scheduler)
    g = ssub.add_parser(
        "gateways",
        help="list gateways and speakers the scheduler knows",
        description="Gateways with their last status and their speakers.",
    )
    _add_common(g)
    g.set_defaults(func=run_gateways)
    s.set_defaults(func=lambda _a: (s.print_help(), 2)[1])

    b = sub.add_parser(
        "broadcast",
        help="send, schedule, cancel and follow broadcasts",
        description="Broadcasts, through the running scheduler's HTTP API.",
    )
    bsub = b.add_subparsers(title="broadcast commands", metavar="ACTION")
    now = bsub.add_parser(
        "now",
        help="broadcast right away",
        description=NOW_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_create(now)
    now.set_defaults(func=run_create, time=None)
    at = bsub.add_parser(
        "at",
        help="schedule a broadcast",
        description=AT_HELP + "\n" + NOW_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    at.add_argument("time", metavar="TIME", help='local time, e.g. "18:30" or "2026-12-01 06:00"')
    _add_create(at)
    at.set_defaults(func=run_create)
    c = bsub.add_parser(
        "cancel",
        help="cancel a broadcast everywhere",
        description="Cancel a broadcast: gateways drop it, or stop it if playing.",
    )
    c.add_argument("id", help="broadcast id")
    _add_common(c)
    c.set_defaults(func=run_cancel)
    st = bsub.add_parser(
        "status",
        help="per-speaker state of a broadcast",
        description=STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    st.add_argument("id", help="broadcast id")
    _add_common(st)
    st.set_defaults(func=run_status)
    ls = bsub.add_parser("list", help="recent broadcasts", description="The most recent broadcasts.")
    _add_common(ls)
    ls.set_defaults(func=run_list)
    b.set_defaults(func=lambda _a: (b.print_help(), 2)[1])


# ---------------------------------------------------------------- helpers


class CliError(Exception):
    pass


def _load(args: argparse.Namespace) -> Any:
    from loaxa.yamlconf import ConfigError
    from scheduler.config import load_scheduler_config

    try:
        return load_scheduler_config(args.config)
    except ConfigError as exc:
        raise CliError(str(exc)) from exc


class Api:
    """The scheduler's HTTP API, signed in with a token or an account."""

    def __init__(self, args: argparse.Namespace):
        import os

        import httpx

        url = getattr(args, "url", None) or os.environ.get("LOAXA_URL")
        if not url and getattr(args, "config", None) is not None:
            from scheduler.service import local_api_url

            url = local_api_url(_load(args))
        if not url:
            raise CliError("where is the scheduler? give --url URL (or set LOAXA_URL), or --config SCHEDULER_YAML")
        self.base = url.rstrip("/")
        self.client = httpx.Client(base_url=self.base, timeout=httpx.Timeout(30, read=600))
        self._tz: str | None = None
        token_file = getattr(args, "token_file", None)
        login = getattr(args, "login", None) or (None if token_file else os.environ.get("LOAXA_LOGIN"))
        if token_file is not None:
            try:
                token = token_file.read_text().strip()
            except OSError as exc:
                raise CliError(f"{token_file}: {exc.strerror}") from exc
        else:
            token = os.environ.get("LOAXA_TOKEN", "").strip()
        if token and not login:
            self.client.headers["Authorization"] = f"Bearer {token}"
        elif login:
            import getpass

            password = os.environ.get("LOAXA_PASSWORD") or getpass.getpass(f"Password for {login}: ")
            session = self.call("POST", "/api/auth/login", json={"login": login, "password": password})
            self.client.headers["X-CSRF-Token"] = session["csrf_token"]
        else:
            raise CliError(
                "the scheduler needs to know who you are: set LOAXA_TOKEN (an admin makes one with "
                "`loaxa tokens create`), give --token-file, or --login ACCOUNT"
            )

    @property
    def timezone(self) -> str:
        if self._tz is None:
            self._tz = str(self.call("GET", "/api/health").get("timezone") or "Asia/Ho_Chi_Minh")
        return self._tz

    def call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            resp = self.client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise CliError(
                f"cannot reach the scheduler at {self.base} ({exc}); is `loaxa scheduler run` running?"
            ) from exc
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail")
            except ValueError:
                detail = resp.text[:300]
            if isinstance(detail, list):  # FastAPI validation errors
                detail = "; ".join(f"{'.'.join(str(x) for x in d.get('loc', []))}: {d.get('msg')}" for d in detail)
            raise CliError(f"{method} {path}: HTTP {resp.status_code}: {detail}")
        return resp.json()


def _handle(fn: Any) -> Any:
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except CliError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return wrapper


def parse_local_time(text: str, tz_name: str, now: datetime | None = None) -> datetime:
    """A user's TIME, read exactly (:mod:`scheduler.schedules.timeinput`) and not in the past."""
    from zoneinfo import ZoneInfo

    from scheduler.schedules.recurrence import RecurrenceError
    from scheduler.schedules.timeinput import TimeInputError, parse_time

    now = now or datetime.now(ZoneInfo(tz_name))
    try:
        dt = parse_time(text, tz_name, now)
    except (TimeInputError, RecurrenceError) as exc:
        raise CliError(str(exc)) from exc
    if dt < now - timedelta(minutes=1):
        raise CliError(f"{text!r} means {dt:%Y-%m-%d %H:%M %Z}, which is in the past")
    return dt


def _fmt_ms(ms: int | None, tz_name: str) -> str:
    if ms is None:
        return "-"
    from zoneinfo import ZoneInfo

    return datetime.fromtimestamp(ms / 1000, ZoneInfo(tz_name)).strftime("%Y-%m-%d %H:%M:%S")


def priority_label(p: int) -> str:
    from protocol.models import PRIORITY_NAMES

    names = {v: k for k, v in PRIORITY_NAMES.items()}
    return f"{names[p]} ({p})" if p in names else str(p)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_status(st: dict[str, Any], tz_name: str) -> str:
    out = [f"broadcast {st['id']}" + (f'  "{st["title"]}"' if st.get("title") else "")]
    start = "now" if st.get("start_at") is None else _fmt_ms(st["start_at"], tz_name)
    out.append(
        f"start: {start}   priority: {priority_label(st['priority'])}   volume: {st['volume']}   "
        f"targets: {' '.join(st['targets'])}" + ("   CANCELLED" if st.get("cancelled") else "")
    )
    for group, devices in (st.get("groups") or {}).items():
        out.append(f"group {group} (when sent): {' '.join(devices)}")
    rows: list[list[str]] = []
    with_speakers = {sp["gateway"] for sp in st["speakers"]}
    for sp in st["speakers"]:
        rows.append(
            [
                sp["gateway"],
                sp["device"],
                sp["state"],
                _fmt_ms(sp["started_at"], tz_name),
                _fmt_ms(sp["ended_at"], tz_name),
                sp.get("reason") or "",
            ]
        )
    for d in st["gateways"]:
        if d["kind"] == "plan" and d["gateway"] not in with_speakers:
            rows.append([d["gateway"], "(all)", d["state"], "-", "-", d.get("error") or "no speaker reported yet"])
    out.append(_table(rows, ["GATEWAY", "SPEAKER", "STATE", "STARTED", "FINISHED", "REASON"]))
    gw_rows = [
        [
            d["gateway"],
            d["kind"],
            d["state"],
            str(d["attempts"]),
            _fmt_ms(d["acked_at"], tz_name),
            d.get("error") or "",
        ]
        for d in st["gateways"]
    ]
    out.append("")
    out.append(_table(gw_rows, ["GATEWAY", "COMMAND", "DELIVERY", "SENT", "ACKED", "ERROR"]))
    summary = ", ".join(f"{n} {s}" for s, n in sorted(st.get("summary", {}).items()))
    out.append(f"\nspeakers: {summary or 'none known yet'}")
    return "\n".join(out)


# ---------------------------------------------------------------- handlers


@_handle
def run_scheduler(args: argparse.Namespace) -> int:
    from scheduler.service import SetupError, run_forever

    try:
        return run_forever(_load(args))
    except SetupError as exc:
        raise CliError(f"{args.config}: {exc}") from exc


@_handle
def run_create(args: argparse.Namespace) -> int:
    api = Api(args)
    tz = api.timezone
    start_at: int | None = None
    if getattr(args, "time", None) is not None:
        start_at = int(parse_local_time(args.time, tz).timestamp() * 1000)
    if args.media is not None:
        try:
            data = args.media.read_bytes()
        except OSError as exc:
            raise CliError(f"{args.media}: {exc.strerror}") from exc
        media = api.call(
            "POST",
            "/api/media",
            params={"name": args.media.name},
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
    elif args.text is not None:
        urgent = args.priority == "emergency"  # slower, and the key sentence repeated (docs/audio.md)
        media = api.call("POST", "/api/tts", json={"text": args.text, "slow": urgent, "repeat_key": urgent})
    else:
        media = api.call("GET", f"/api/media/{args.sha256}")
    body = {
        "media_sha256": media["sha256"],
        "targets": args.targets,
        "start_at": start_at,
        "priority": args.priority,
        "volume": args.volume,
        "repeat": args.repeat,
        "title": args.title,
    }
    st = api.call("POST", "/api/broadcasts", json=body)
    if args.json and args.wait:
        pass  # only the final status is printed
    elif args.json:
        print(json.dumps(st, ensure_ascii=False, indent=2))
    else:
        when = "now" if start_at is None else _fmt_ms(start_at, tz)
        print(
            f"broadcast {st['id']} created ({media['duration_ms'] / 1000:.1f} s of audio, start {when}, "
            f"{len(st['gateways'])} gateway(s))"
        )
        for warning in st.get("warnings", []):
            print(f"warning: {warning}")
        print(f"follow it with: loaxa broadcast status {st['id']} --url {api.base}")
    if args.wait:
        return _wait_and_show(api, st["id"], args.wait, args.json)
    return 0


def _wait_and_show(api: Api, bid: str, timeout_s: float, as_json: bool) -> int:
    """Poll until every speaker has a final state (or ``timeout_s``); print the status; 0 if all finished."""
    import time

    final = {"finished", "failed", "preempted", "skipped"}
    deadline = time.monotonic() + timeout_s
    while True:
        st = api.call("GET", f"/api/broadcasts/{bid}")
        plans = [d for d in st["gateways"] if d["kind"] == "plan"]
        settled = all(d["state"] != "pending" for d in plans) and all(sp["state"] in final for sp in st["speakers"])
        if (settled and st["speakers"]) or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    if as_json:
        print(json.dumps(st, ensure_ascii=False, indent=2))
    else:
        print(render_status(st, api.timezone))
    return 0 if st["speakers"] and all(sp["state"] == "finished" for sp in st["speakers"]) else 1


@_handle
def run_cancel(args: argparse.Namespace) -> int:
    api = Api(args)
    st = api.call("POST", f"/api/broadcasts/{args.id}/cancel")
    if args.json:
        print(json.dumps(st, ensure_ascii=False, indent=2))
    else:
        n = sum(1 for d in st["gateways"] if d["kind"] == "cancel")
        print(f"broadcast {st['id']} cancelled; cancel sent to {n} gateway(s)")
    return 0


@_handle
def run_status(args: argparse.Namespace) -> int:
    api = Api(args)
    st = api.call("GET", f"/api/broadcasts/{args.id}")
    if args.json:
        print(json.dumps(st, ensure_ascii=False, indent=2))
    else:
        print(render_status(st, api.timezone))
    done = bool(st["speakers"]) and all(sp["state"] == "finished" for sp in st["speakers"])
    return 0 if done else 1


@_handle
def run_list(args: argparse.Namespace) -> int:
    api = Api(args)
    rows = api.call("GET", "/api/broadcasts")
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    tz = api.timezone
    print(
        _table(
            [
                [
                    r["id"],
                    _fmt_ms(r["created_at"], tz),
                    "now" if r["start_at"] is None else _fmt_ms(r["start_at"], tz),
                    priority_label(r["priority"]),
                    " ".join(r["targets"]),
                    "yes" if r["cancelled"] else "",
                    r.get("title") or "",
                ]
                for r in rows
            ],
            ["ID", "CREATED", "START", "PRIORITY", "TARGETS", "CANCELLED", "TITLE"],
        )
    )
    return 0


@_handle
def run_gateways(args: argparse.Namespace) -> int:
    api = Api(args)
    rows = api.call("GET", "/api/gateways")
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    tz = api.timezone
    table = []
    for g in rows:
        table.append(
            [
                g["id"],
                g.get("commune") or "",
                g.get("status") or "unknown",
                _fmt_ms(g.get("last_seen"), tz),
                g.get("version") or "",
                str(len(g["speakers"])),
            ]
        )
    print(_table(table, ["GATEWAY", "COMMUNE", "STATUS", "LAST SEEN", "VERSION", "SPEAKERS"]))
    return 0
