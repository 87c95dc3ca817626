"""``loaxa gateway export --config gateway.yaml --from 2026-05-01 --to 2026-05-08 [--out FILE]``

Writes the readings kept in the gateway's spool (delivered ones kept for ``spool.retain_days`` and
those not yet delivered) as CSV, one row per field value::

    time_utc,ts_ms,gateway,device,measurement,field,value,delivered
    2026-05-01T00:00:10.000Z,1777593610000,xa-an-binh,river-1,water_level,level_cm,132.5,yes

``--from`` is inclusive, ``--to`` exclusive. A date or a time without a zone is read as Vietnam time
(UTC+7); ``Z`` or ``+hh:mm`` are honoured. It only reads the spool file (safe while the gateway runs).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import sys
from pathlib import Path
from typing import Any, TextIO

VN = dt.timezone(dt.timedelta(hours=7), "ICT")

DESCRIPTION = __doc__.split("\n", 2)[2] if __doc__ else ""


def parse_time(text: str) -> int:
    """ISO date or date-time → epoch ms; naive means Vietnam time (UTC+7)."""
    from dateutil import parser as dparser

    try:
        value = dparser.isoparse(text)
    except (ValueError, OverflowError) as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO date or date-time (e.g. 2026-05-01 or 2026-05-01T06:00+07:00): {exc}"
        ) from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=VN)
    return int(value.timestamp() * 1000)


def iso_utc(ts_ms: int) -> str:
    return dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def export(
    spool_path: Path,
    gateway: str,
    from_ms: int,
    to_ms: int,
    out: TextIO,
    *,
    device: str | None = None,
    measurement: str | None = None,
) -> int:
    """Write CSV to ``out``; returns the number of readings exported."""
    from .lineproto import parse_fields
    from .spool import iter_readings

    w = csv.writer(out, lineterminator="\n")
    w.writerow(["time_utc", "ts_ms", "gateway", "device", "measurement", "field", "value", "delivered"])
    n = 0
    for ts, dev, meas, fields, delivered in iter_readings(
        spool_path, from_ms, to_ms, device=device, measurement=measurement
    ):
        stamp = iso_utc(ts)
        for name, value in parse_fields(fields).items():
            w.writerow([stamp, ts, gateway, dev, meas, name, repr(value), "yes" if delivered else "no"])
        n += 1
    return n


def run(args: argparse.Namespace) -> int:
    from gateway.config import load_gateway_config
    from loaxa.yamlconf import ConfigError

    from .service import SPOOL_FILE

    try:
        cfg = load_gateway_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.to_ms <= args.from_ms:
        print("--to must be after --from", file=sys.stderr)
        return 2
    spool = Path(cfg.gateway.data_dir) / SPOOL_FILE
    if not spool.exists():
        print(
            f"{spool}: no spool here yet (has the gateway run with data_dir {cfg.gateway.data_dir}?)",
            file=sys.stderr,
        )
        return 1
    if args.out and args.out != "-":
        with open(args.out, "w", newline="", encoding="utf-8") as f:
            n = export(
                spool,
                cfg.gateway.id,
                args.from_ms,
                args.to_ms,
                f,
                device=args.device,
                measurement=args.measurement,
            )
        print(f"{n} readings written to {args.out}", file=sys.stderr)
    else:
        n = export(
            spool,
            cfg.gateway.id,
            args.from_ms,
            args.to_ms,
            sys.stdout,
            device=args.device,
            measurement=args.measurement,
        )
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="the gateway's YAML (for data_dir and the gateway id)")
    p.add_argument(
        "--from",
        dest="from_ms",
        type=parse_time,
        required=True,
        metavar="WHEN",
        help="first moment included, e.g. 2026-05-01 or 2026-05-01T06:00 (Vietnam time unless zoned)",
    )
    p.add_argument(
        "--to", dest="to_ms", type=parse_time, required=True, metavar="WHEN", help="first moment NOT included"
    )
    p.add_argument("--device", help="only this device id")
    p.add_argument("--measurement", help="only this measurement (water_level, rain, …)")
    p.add_argument("--out", help="CSV file to write (default: standard output)")


def register_export(gateway_sub: Any) -> argparse.ArgumentParser:
    """Add ``export`` to the ``loaxa gateway`` subcommands (call from gateway/cli.py)."""
    p: argparse.ArgumentParser = gateway_sub.add_parser(
        "export",
        help="write retained sensor readings as CSV",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)
    return p


#: the name ``gateway/cli.py`` looks for
register_gateway = register_export


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="loaxa gateway export",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
