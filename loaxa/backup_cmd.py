"""``loaxa backup create|restore`` (central server; see loaxa/backup.py and docs/operations.md)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

CREATE_HELP = """\
Back up the central server into one archive, while it runs:
the scheduler database (SQLite backup API, or pg_dump for PostgreSQL), the media library, the
config folder with its secrets and signing key and the provisioned communes, and the central
broker's password file, ACL, config and certificates. InfluxDB: use its own tool (docs/operations.md).

  loaxa backup create --config /etc/loaxa/scheduler.yaml --out /var/backups/loaxa/
"""

RESTORE_HELP = """\
Restore a backup. The whole archive is checked first (manifest and SHA-256 of every file): a
damaged archive is refused and nothing is written. Existing files are never overwritten without
--force. With --root DIR everything goes under DIR and the restored configs point there.

  systemctl stop loaxa-scheduler mosquitto
  loaxa backup restore /var/backups/loaxa/loaxa-20260101-0200.tar.gz --force
  loaxa db upgrade --config /etc/loaxa/scheduler.yaml && systemctl start mosquitto loaxa-scheduler
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("backup", help="back up or restore the central server", description="Backups.")
    bsub = p.add_subparsers(title="backup commands", metavar="ACTION")
    c = bsub.add_parser("create", help="write a backup archive", description=CREATE_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--config", type=Path, default=Path("/etc/loaxa/scheduler.yaml"))
    c.add_argument("--config-dir", type=Path, help="the folder of configs and secrets (default: the config's folder)")
    c.add_argument("--out", type=Path, default=Path("/var/backups/loaxa"),
                   help="archive file, or a folder for loaxa-YYYYmmdd-HHMMSS.tar.gz (default /var/backups/loaxa)")
    c.add_argument("--broker-file", action="append", type=Path, metavar="PATH",
                   help="broker files to include (default: /etc/mosquitto/loaxa.passwd, loaxa.acl, "
                        "conf.d/loaxa.conf, certs/)")
    c.add_argument("--include", action="append", type=Path, default=[], metavar="PATH", help="more files or folders")
    c.set_defaults(func=run_create)
    r = bsub.add_parser("restore", help="restore a backup archive", description=RESTORE_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("archive", type=Path)
    r.add_argument("--root", type=Path, default=Path("/"), help="restore under this folder (default /)")
    r.add_argument("--force", action="store_true", help="overwrite existing files")
    r.add_argument("--database-url", help="PostgreSQL: the empty database to restore the dump into")
    r.set_defaults(func=run_restore)
    v = bsub.add_parser("verify", help="check an archive without restoring it")
    v.add_argument("archive", type=Path)
    v.set_defaults(func=run_verify)
    p.set_defaults(func=lambda _a: (p.print_help(), 2)[1])


def run_create(args: argparse.Namespace) -> int:
    from loaxa.backup import DEFAULT_BROKER_FILES, BackupError, create

    out: Path = args.out
    if out.is_dir() or not out.name.endswith((".tar.gz", ".tgz")):
        out = out / time.strftime("loaxa-%Y%m%d-%H%M%S.tar.gz")
    try:
        manifest = create(args.config, out, config_dir=args.config_dir,
                          broker_files=args.broker_file if args.broker_file else DEFAULT_BROKER_FILES,
                          extra=args.include)
    except (BackupError, OSError) as exc:
        print(f"loaxa backup create: {exc}", file=sys.stderr)
        return 2
    db = manifest.get("database", {}).get("kind", "none")
    size = sum(int(e["size"]) for e in manifest["files"])
    print(f"{out}: {len(manifest['files'])} files, {size / 1e6:.1f} MB before compression, database: {db}")
    print("InfluxDB is not in it: back it up with its own tool (docs/operations.md)")
    return 0


def run_restore(args: argparse.Namespace) -> int:
    from loaxa.backup import BackupError, restore

    try:
        written = restore(args.archive, args.root, force=args.force, database_url=args.database_url)
    except (BackupError, OSError) as exc:
        print(f"loaxa backup restore: {exc}", file=sys.stderr)
        return 2
    print(f"{args.archive}: {len(written)} files restored under {args.root}")
    if args.root == Path("/"):
        print("now: loaxa db upgrade --config /etc/loaxa/scheduler.yaml; systemctl start mosquitto loaxa-scheduler;"
              " loaxa doctor --config /etc/loaxa/scheduler.yaml")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    import tempfile

    from loaxa.backup import BackupError, verify

    with tempfile.TemporaryDirectory(prefix="loaxa-verify-") as tmp:
        try:
            manifest = verify(args.archive, Path(tmp))
        except BackupError as exc:
            print(f"loaxa backup verify: {exc}", file=sys.stderr)
            return 2
    print(f"{args.archive}: OK, {len(manifest['files'])} files, made {time.ctime(manifest['created_at'])}"
          f" on {manifest.get('host')}")
    return 0
