"""``loaxa devices list|show|set|ping|health|restart`` and ``loaxa alarms list|show|ack|clear|silence|…``.

Like ``loaxa broadcast``, these talk to the RUNNING scheduler over its HTTP API (address and
credentials from the same config file): an action goes out as a signed command at once and the
command prints what the device itself reported.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

DEVICES_HELP = """\
See and act on the gateways and devices (speakers, sensors) of the communes.

  export LOAXA_TOKEN=…   (or --token-file FILE, or --login ACCOUNT)
  loaxa devices list --config /etc/loaxa/scheduler.yaml [--status offline]
  loaxa devices show xa-an-binh/loa-cho --config …
  loaxa devices set xa-an-binh/loa-cho --volume 60 --config …      (one speaker)
  loaxa devices set xa-an-binh --power off --config …              (every speaker of the commune)
  loaxa devices ping xa-an-binh/loa-cho --config …
  loaxa devices health xa-an-binh --config …                       (a fresh health report)
  loaxa devices restart xa-an-binh --reason "…" --config …         (restart the gateway's service)

A status is "unknown" (not "offline") when the scheduler cannot know: its own broker link is down,
the gateway is offline, or the device has not reported since the scheduler started.
"""

ALARMS_HELP = """\
Alarms: one per (device or gateway, type), active or cleared, acknowledged or not.

  loaxa alarms list --config …                 (active ones; --cleared, --all)
  loaxa alarms ack 42 --note "đang đến kiểm tra" --config …
  loaxa alarms silence xa-an-binh/loa-cho --for 2h --reason "thay loa" --config …
  loaxa alarms silences --config …   /   loaxa alarms unsilence 7 --config …

docs/alarms.md lists the rules and what to do for each alarm.
"""

_DURATION_RE = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """``90s``, ``30m``, ``2h``, ``7d`` → seconds."""
    m = _DURATION_RE.match(text.strip().lower())
    if m is None:
        from scheduler.cli import CliError

        raise CliError(f"duration {text!r}: write a number and s, m, h or d (e.g. 2h)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _target(text: str) -> tuple[str, str | None]:
    from protocol.ids import validate_id
    from scheduler.cli import CliError

    parts = text.strip().split("/")
    try:
        if len(parts) == 1:
            return validate_id(parts[0], "gateway id"), None
        if len(parts) == 2:
            return validate_id(parts[0], "gateway id"), validate_id(parts[1], "device id")
    except ValueError as exc:
        raise CliError(f"{text!r}: {exc}") from exc
    raise CliError(f"{text!r}: write GATEWAY or GATEWAY/DEVICE")


def _common(p: argparse.ArgumentParser) -> None:
    """--url / --config / --token-file / --login / --json, as every command of the scheduler's API."""
    from scheduler.cli import _add_common

    _add_common(p)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    d = sub.add_parser("devices", help="fleet: gateways and devices, remote actions", description=DEVICES_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    dsub = d.add_subparsers(title="actions", metavar="ACTION", required=True)
    p = dsub.add_parser("list", help="every device with its status, volume, power, signal, last seen")
    _common(p)
    p.add_argument("--gateway", help="only this gateway")
    p.add_argument("--kind", choices=["speaker", "sensor", "other"])
    p.add_argument("--status", choices=["online", "offline", "unknown"])
    p.set_defaults(func=run_list)
    p = dsub.add_parser("show", help="one gateway or device in full, with its recent alarms")
    _common(p)
    p.add_argument("target", metavar="GW[/DEV]")
    p.set_defaults(func=run_show)
    p = dsub.add_parser("set", help="set volume / power / source; prints the speaker's own report")
    _common(p)
    p.add_argument("target", metavar="GW[/DEV]", help="a speaker, or a gateway for all its speakers")
    p.add_argument("--volume", type=int, help="0-100")
    p.add_argument("--power", choices=["on", "off"], help="amplifier power")
    p.add_argument("--source", help="audio input, e.g. stream, line, fm")
    p.set_defaults(func=run_set)
    p = dsub.add_parser("ping", help="ask a gateway (the ack) or a device (through its gateway) to answer")
    _common(p)
    p.add_argument("target", metavar="GW[/DEV]")
    p.set_defaults(func=run_ping)
    p = dsub.add_parser("health", help="ask a gateway for a fresh health report and print it")
    _common(p)
    p.add_argument("gateway", metavar="GW")
    p.set_defaults(func=run_health)
    p = dsub.add_parser("restart", help="restart a gateway's service and wait for it to come back")
    _common(p)
    p.add_argument("gateway", metavar="GW")
    p.add_argument("--reason", help="kept in the audit log and the gateway's log")
    p.set_defaults(func=run_restart)

    a = sub.add_parser("alarms", help="alarms: list, acknowledge, clear, maintenance silences",
                       description=ALARMS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    asub = a.add_subparsers(title="actions", metavar="ACTION", required=True)
    p = asub.add_parser("list", help="active alarms (newest first)")
    _common(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--cleared", action="store_true", help="cleared alarms instead")
    g.add_argument("--all", action="store_true", help="active and cleared")
    p.add_argument("--gateway", help="only this gateway")
    p.set_defaults(func=run_alarms)
    p = asub.add_parser("show", help="one alarm with its history")
    _common(p)
    p.add_argument("id", type=int)
    p.set_defaults(func=run_alarm_show)
    for name, helptext in (("ack", "acknowledge an alarm (with a note)"),
                           ("clear", "clear an alarm by hand (it comes back if its condition still holds)")):
        p = asub.add_parser(name, help=helptext)
        _common(p)
        p.add_argument("id", type=int)
        p.add_argument("--note", help="what you did or will do")
        p.set_defaults(func=run_alarm_action, action=name)
    p = asub.add_parser("silence", help="silence a gateway or device for maintenance")
    _common(p)
    p.add_argument("target", metavar="GW[/DEV]")
    p.add_argument("--for", dest="duration", required=True, help="how long: 30m, 2h, 3d (at most 30d)")
    p.add_argument("--types", help="only these alarm types, comma-separated (default: all)")
    p.add_argument("--reason", help="why (shown to the other technicians)")
    p.set_defaults(func=run_silence)
    p = asub.add_parser("silences", help="silences in force")
    _common(p)
    p.set_defaults(func=run_silences)
    p = asub.add_parser("unsilence", help="end a silence now")
    _common(p)
    p.add_argument("id", type=int)
    p.set_defaults(func=run_unsilence)


def _api(args: argparse.Namespace) -> Any:
    from scheduler.cli import Api

    return Api(args)


def _print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2))


def _handled(fn: Any) -> Any:
    from scheduler.cli import _handle

    return _handle(fn)


def _yn(v: Any) -> str:
    return "-" if v is None else ("on" if v is True else "off" if v is False else str(v))


def run_list(args: argparse.Namespace) -> int:
    return int(_handled(_list)(args))


def _list(args: argparse.Namespace) -> int:
    from scheduler.cli import _fmt_ms, _table

    api = _api(args)
    params = {k: v for k, v in (("gateway", args.gateway), ("kind", args.kind), ("status", args.status)) if v}
    rows = api.call("GET", "/api/fleet/devices", params=params)
    if args.json:
        _print_json(rows)
        return 0
    tz = api.timezone
    table = [[d["gateway"], d["device"], d["kind"], d["status"], _yn(d["volume"]), _yn(d["power"]),
              d.get("source") or "-", _yn(d.get("rssi")), d.get("firmware") or "-", _fmt_ms(d["last_seen"], tz),
              d.get("name") or ""] for d in rows]
    print(_table(table, ["GATEWAY", "DEVICE", "KIND", "STATUS", "VOLUME", "POWER", "SOURCE", "RSSI", "FIRMWARE",
                         "LAST SEEN", "NAME"]))
    return 0


def run_show(args: argparse.Namespace) -> int:
    return int(_handled(_show)(args))


def _show(args: argparse.Namespace) -> int:
    gw, dev = _target(args.target)
    api = _api(args)
    data = api.call("GET", f"/api/fleet/devices/{gw}/{dev}" if dev else f"/api/fleet/gateways/{gw}")
    _print_json(data)  # a record reads best as indented JSON (--json is accepted for symmetry)
    return 0


def _report(result: dict[str, Any]) -> int:
    """Print an action's answer the way a technician reads it; exit 0 when it fully worked."""
    ack = result.get("ack")
    ack_text = "no ack" if ack is None else ("ok" if ack["ok"] else f"refused: {ack['reason']}: {ack['error']}")
    print(f"{result['kind']} {result['gateway']} (command {result['command_id']}): gateway {ack_text}"
          + (f", {ack['rtt_ms']} ms" if ack else ""))
    for dev, rep in (result.get("devices") or {}).items():
        if "reported" in rep:  # device.set
            st = rep.get("state") or {}
            shown = ", ".join(f"{k} {_yn(st.get(k))}" for k in ("online", "volume", "power", "source") if k in st)
            print(f"  {dev}: {'reported' if rep['reported'] else 'NO REPORT'}: {shown or 'no state'}")
        else:  # ping
            print(f"  {dev}: {'answered' if rep.get('ok') else 'no answer'}"
                  + (f" in {rep['rtt_ms']} ms" if rep.get("rtt_ms") is not None else "")
                  + (f" ({rep['reason']})" if rep.get("reason") else ""))
    if result.get("error"):
        print(f"error: {result['error']}")
    return 0 if result["ok"] else 1


def run_set(args: argparse.Namespace) -> int:
    return int(_handled(_set)(args))


def _set(args: argparse.Namespace) -> int:
    from scheduler.cli import CliError

    gw, dev = _target(args.target)
    body: dict[str, Any] = {}
    if args.volume is not None:
        if not 0 <= args.volume <= 100:
            raise CliError("--volume must be 0-100")
        body["volume"] = args.volume
    if args.power is not None:
        body["power"] = args.power == "on"
    if args.source is not None:
        body["source"] = args.source
    if not body:
        raise CliError("nothing to set: give --volume, --power or --source")
    api = _api(args)
    result = api.call("POST", f"/api/fleet/devices/{gw}/{dev}/set" if dev else f"/api/fleet/gateways/{gw}/set",
                      json=body)
    if args.json:
        _print_json(result)
        return 0 if result["ok"] else 1
    return _report(result)


def run_ping(args: argparse.Namespace) -> int:
    return int(_handled(_ping)(args))


def _ping(args: argparse.Namespace) -> int:
    gw, dev = _target(args.target)
    result = _api(args).call("POST", f"/api/fleet/devices/{gw}/{dev}/ping" if dev else f"/api/fleet/gateways/{gw}/ping")
    if args.json:
        _print_json(result)
        return 0 if result["ok"] else 1
    return _report(result)


def run_health(args: argparse.Namespace) -> int:
    return int(_handled(_health)(args))


def _health(args: argparse.Namespace) -> int:
    gw, _ = _target(args.gateway)
    result = _api(args).call("POST", f"/api/fleet/gateways/{gw}/health-report")
    _print_json(result if args.json else result.get("health") or result)
    return 0 if result["ok"] else 1


def run_restart(args: argparse.Namespace) -> int:
    return int(_handled(_restart)(args))


def _restart(args: argparse.Namespace) -> int:
    gw, _ = _target(args.gateway)
    result = _api(args).call("POST", f"/api/fleet/gateways/{gw}/restart", json={"reason": args.reason})
    if args.json:
        _print_json(result)
    else:
        print(f"gateway {gw}: {'back online' if result['ok'] else result['error']} "
              f"after {result['elapsed_ms'] / 1000:.1f} s")
    return 0 if result["ok"] else 1


def run_alarms(args: argparse.Namespace) -> int:
    return int(_handled(_alarms)(args))


def _alarms(args: argparse.Namespace) -> int:
    from scheduler.cli import _fmt_ms, _table

    api = _api(args)
    params: dict[str, Any] = {"limit": 500}
    if args.gateway:
        params["gateway"] = args.gateway
    rows: list[dict[str, Any]] = []
    for status in (["active", "cleared"] if args.all else ["cleared"] if args.cleared else ["active"]):
        rows += api.call("GET", "/api/alarms", params={**params, "status": status})
    if args.json:
        _print_json(rows)
        return 0
    tz = api.timezone
    table = [[str(a["id"]), a["state"], a["severity"], a["type"], a["gateway"], a.get("device") or "-",
              _fmt_ms(a["first_seen"], tz), _fmt_ms(a["last_seen"], tz), str(a["count"]),
              ("silenced " if a["silenced"] else "") + (a["message"] or "")[:80]] for a in rows]
    print(_table(table, ["ID", "STATE", "SEVERITY", "TYPE", "GATEWAY", "DEVICE", "FIRST SEEN", "LAST SEEN", "COUNT",
                         "MESSAGE"]))
    return 0


def run_alarm_show(args: argparse.Namespace) -> int:
    return int(_handled(_alarm_show)(args))


def _alarm_show(args: argparse.Namespace) -> int:
    _print_json(_api(args).call("GET", f"/api/alarms/{args.id}"))
    return 0


def run_alarm_action(args: argparse.Namespace) -> int:
    return int(_handled(_alarm_action)(args))


def _alarm_action(args: argparse.Namespace) -> int:
    rec = _api(args).call("POST", f"/api/alarms/{args.id}/{args.action}", json={"note": args.note})
    if args.json:
        _print_json(rec)
    else:
        print(f"alarm {rec['id']} ({rec['type']} on {rec.get('device') or rec['gateway']}): {rec['state']}")
    return 0


def run_silence(args: argparse.Namespace) -> int:
    return int(_handled(_silence)(args))


def _silence(args: argparse.Namespace) -> int:
    from scheduler.cli import _fmt_ms

    gw, dev = _target(args.target)
    body: dict[str, Any] = {"gateway": gw, "device": dev, "duration_s": parse_duration(args.duration),
                            "reason": args.reason}
    if args.types:
        body["types"] = [t.strip() for t in args.types.split(",") if t.strip()]
    api = _api(args)
    s = api.call("POST", "/api/silences", json=body)
    if args.json:
        _print_json(s)
    else:
        print(f"silence {s['id']}: {args.target} until {_fmt_ms(s['ends_at'], api.timezone)}"
              f" (end it early: loaxa alarms unsilence {s['id']})")
    return 0


def run_silences(args: argparse.Namespace) -> int:
    return int(_handled(_silences)(args))


def _silences(args: argparse.Namespace) -> int:
    from scheduler.cli import _fmt_ms, _table

    api = _api(args)
    rows = api.call("GET", "/api/silences")
    if args.json:
        _print_json(rows)
        return 0
    tz = api.timezone
    print(_table([[str(s["id"]), s["gateway"], s.get("device") or "(all)", ",".join(s.get("types") or []) or "(all)",
                   _fmt_ms(s["ends_at"], tz), s["created_by"], s.get("reason") or ""] for s in rows],
                 ["ID", "GATEWAY", "DEVICE", "TYPES", "UNTIL", "BY", "REASON"]))
    return 0


def run_unsilence(args: argparse.Namespace) -> int:
    return int(_handled(_unsilence)(args))


def _unsilence(args: argparse.Namespace) -> int:
    s = _api(args).call("DELETE", f"/api/silences/{args.id}")
    print(f"silence {s['id']} ended")
    return 0
