"""``loaxa backup create|restore``: everything a central server needs to come back, in one archive.

What goes in (docs/operations.md, "Back up"):

* the scheduler database, taken online and consistent while the scheduler runs: SQLite through its
  backup API (a copy of the file could catch a half-written WAL), PostgreSQL through ``pg_dump``;
* the rest of the scheduler's data directory: the media library and ``media-url.key``;
* the config folder (``/etc/loaxa``: scheduler.yaml, secrets, the signing key, provisioned communes
  and their bundles) and every secret file the config names outside it;
* the central broker's password file, ACL, config and certificates.

InfluxDB is backed up with its own tool (``influxd backup -portable`` / ``influx backup``): its data
is far larger and it has its own consistent snapshot.

The archive is a gzip'd tar with ``MANIFEST.json`` first: for each file its original absolute path,
size, mode and SHA-256. ``restore`` reads and checks the whole archive before it writes anything,
refuses a damaged one, and never overwrites an existing file without ``--force``. With ``--root DIR``
it restores under DIR (a test, or a look at an old backup) and moves the absolute paths in the
restored configs under DIR too.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from loaxa import __version__

MANIFEST = "MANIFEST.json"
FORMAT = 1
DEFAULT_BROKER_FILES = (Path("/etc/mosquitto/loaxa.passwd"), Path("/etc/mosquitto/loaxa.acl"),
                        Path("/etc/mosquitto/conf.d/loaxa.conf"), Path("/etc/mosquitto/certs"))
#: files in the data directory that are not copied as files (the database is taken through its API)
_DB_SUFFIXES = ("scheduler.db", "scheduler.db-wal", "scheduler.db-shm", "scheduler.db-journal")


class BackupError(RuntimeError):
    """The backup cannot be made or restored; the message says why."""


@dataclass
class Entry:
    member: str
    path: str  # absolute path on the server ("" for the database dump of PostgreSQL)
    sha256: str
    size: int
    mode: int
    owner: str = ""  # user and group names: a restored scheduler.db must belong to `loaxa` again
    group: str = ""


def _names(path: Path) -> tuple[str, str]:
    import grp
    import pwd

    st = path.stat()
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = ""
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = ""
    return owner, group


def _chown(path: Path, owner: str, group: str) -> None:
    """Give a restored file its owner back (by name: uids differ between machines); root only."""
    import grp
    import pwd

    if os.geteuid() != 0 or not (owner or group):
        return
    try:
        uid = pwd.getpwnam(owner).pw_uid if owner else -1
        gid = grp.getgrnam(group).gr_gid if group else -1
    except KeyError:
        return  # that account does not exist here (yet): install.sh creates `loaxa`
    os.chown(path, uid, gid)


@dataclass
class Plan:
    """What ``create`` will put in the archive."""

    files: list[tuple[Path, str]] = field(default_factory=list)  # (file, member)
    roots: list[str] = field(default_factory=list)  # absolute folders the configs name
    seen: set[Path] = field(default_factory=set)

    def add(self, path: Path) -> None:
        path = path.absolute()
        if path in self.seen or not path.exists():
            return
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and not child.is_symlink():
                    self._file(child)
        elif path.is_file():
            self._file(path)

    def _file(self, path: Path) -> None:
        if path in self.seen:
            return
        self.seen.add(path)
        self.files.append((path, "files" + str(path)))

    def root(self, path: Path) -> None:
        p = str(path.absolute())
        if p not in self.roots:
            self.roots.append(p)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _secret_files(obj: Any) -> Iterator[Path]:
    """Every ``{file: PATH}`` secret a loaded config names."""
    from loaxa.yamlconf import Secret

    if isinstance(obj, Secret):
        if obj.file is not None:
            yield Path(obj.file)
        return
    fields = getattr(type(obj), "model_fields", None)
    if fields is None:
        return
    for name in fields:
        value = getattr(obj, name)
        for v in value if isinstance(value, list) else [value]:
            yield from _secret_files(v)


def sqlite_snapshot(db: Path, out: Path) -> None:
    """A consistent copy of a live SQLite database (WAL included) through the backup API."""
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(out)
        try:
            src.backup(dst, pages=1024)
            ok = dst.execute("PRAGMA integrity_check").fetchone()
            if ok is None or ok[0] != "ok":
                raise BackupError(f"{db}: the copy fails SQLite's integrity check: {ok}")
        finally:
            dst.close()
    finally:
        src.close()


def _pg(url: str, tool: str) -> tuple[str, str, dict[str, str]]:
    """(binary, libpq URL without the password, environment with PGPASSWORD): the password never
    appears on a command line, where ``ps`` would show it."""
    from sqlalchemy.engine import make_url

    from loaxa.servers import ServerUnavailable, find_postgres_binary

    try:
        binary = shutil.which(tool) or find_postgres_binary(tool)
    except ServerUnavailable:
        raise BackupError(f"{tool} is not installed (apt-get install postgresql-client)") from None
    u = make_url(url)
    env = dict(os.environ)
    if u.password:
        env["PGPASSWORD"] = str(u.password)
    bare = u.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    return binary, bare, env


def create(config: Path, out: Path, *, config_dir: Path | None = None,
           broker_files: Iterable[Path] = DEFAULT_BROKER_FILES, extra: Iterable[Path] = ()) -> dict[str, Any]:
    """Write the archive ``out`` (0600) and return its manifest."""
    from loaxa.yamlconf import ConfigError
    from scheduler.config import load_scheduler_config

    try:
        cfg = load_scheduler_config(config)
    except ConfigError as exc:
        raise BackupError(f"{config}: not a valid scheduler config:\n"
                          + "\n".join(str(p) for p in exc.problems)) from None
    config = config.absolute()
    config_dir = (config_dir or config.parent).absolute()
    data_dir = cfg.scheduler.data_dir.absolute()
    plan = Plan()
    plan.root(config_dir)
    plan.root(data_dir)
    plan.add(config_dir)
    plan.add(config)
    for secret in _secret_files(cfg):
        plan.add(secret)
        plan.root(secret.absolute().parent)
    if data_dir.is_dir():
        for child in sorted(data_dir.rglob("*")):
            rel = child.relative_to(data_dir)
            if child.is_file() and rel.as_posix() not in _DB_SUFFIXES and rel.parts[:2] != ("media", "tmp"):
                plan.add(child)
    for f in [*broker_files, *extra]:
        if f.exists():
            plan.add(f)
            plan.root(f.absolute() if f.is_dir() else f.absolute().parent)

    manifest: dict[str, Any] = {"format": FORMAT, "created_at": int(time.time()), "loaxa": __version__,
                                "host": socket.gethostname(), "config": str(config), "roots": plan.roots,
                                "files": []}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="loaxa-backup-", dir=out.parent) as tmpd:
        tmp = Path(tmpd)
        db_member: tuple[Path, str, str] | None = None
        url = cfg.scheduler.database_url
        if url is None or url.startswith("sqlite"):
            db = data_dir / "scheduler.db" if url is None else Path(url.split(":///", 1)[1])
            if db.exists():
                sqlite_snapshot(db, tmp / "scheduler.db")
                db_member = (tmp / "scheduler.db", "db/scheduler.db", str(db.absolute()))
                manifest["database"] = {"kind": "sqlite", "path": str(db.absolute()), "member": "db/scheduler.db"}
        else:
            dump = tmp / "scheduler.pgdump"
            pg_dump, bare, env = _pg(url, "pg_dump")
            r = subprocess.run([pg_dump, "--format=custom", "--no-owner", f"--file={dump}", f"--dbname={bare}"],
                               capture_output=True, text=True, timeout=3600, env=env)
            if r.returncode != 0:
                raise BackupError(f"pg_dump failed: {r.stderr.strip()[-500:]}")
            db_member = (dump, "db/scheduler.pgdump", "")
            manifest["database"] = {"kind": "postgresql", "member": "db/scheduler.pgdump"}

        entries: list[tuple[Path, Entry]] = []
        if db_member is not None:
            src, member, orig = db_member
            owner, group = _names(Path(orig)) if orig else ("", "")
            entries.append((src, Entry(member, orig, _sha256_file(src), src.stat().st_size, 0o600, owner, group)))
        for path, member in plan.files:
            st = path.stat()
            entries.append((path, Entry(member, str(path), _sha256_file(path), st.st_size, st.st_mode & 0o777,
                                        *_names(path))))
        manifest["files"] = [e.__dict__ for _p, e in entries]

        part = tmp / "archive.tar.gz"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            data = json.dumps(manifest, indent=1).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
            tar.addfile(info, io.BytesIO(data))
            for path, e in entries:
                info = tarfile.TarInfo(e.member)
                info.size, info.mode, info.mtime = e.size, e.mode, int(path.stat().st_mtime)
                with open(path, "rb") as fobj:
                    tar.addfile(info, fobj)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(part, out)
    return manifest


# ------------------------------------------------------------------ restore


def verify(archive: Path, staging: Path) -> dict[str, Any]:
    """Unpack ``archive`` into ``staging`` checking every member against the manifest; raise on damage."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST:
                raise BackupError(f"{archive}: no {MANIFEST} at its start; not a Loa Xã backup")
            fh = tar.extractfile(first)
            assert fh is not None
            manifest = json.loads(fh.read())
            if manifest.get("format") != FORMAT:
                raise BackupError(f"{archive}: backup format {manifest.get('format')!r}, this loaxa reads {FORMAT}")
            expected = {e["member"]: e for e in manifest["files"]}
            seen: set[str] = set()
            while (m := tar.next()) is not None:
                p = PurePosixPath(m.name)
                if not m.isfile() or p.is_absolute() or ".." in p.parts or m.name not in expected:
                    raise BackupError(f"{archive}: unexpected member {m.name!r}")
                if m.name in seen:
                    raise BackupError(f"{archive}: {m.name} appears twice")
                seen.add(m.name)
                src = tar.extractfile(m)
                assert src is not None
                dest = staging / m.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                h = hashlib.sha256()
                with open(dest, "wb") as f:
                    while chunk := src.read(1 << 20):
                        h.update(chunk)
                        f.write(chunk)
                if h.hexdigest() != expected[m.name]["sha256"]:
                    raise BackupError(f"{archive}: {m.name} is damaged (checksum mismatch)")
            missing = sorted(set(expected) - seen)
            if missing:
                raise BackupError(f"{archive}: {len(missing)} file(s) missing, e.g. {missing[0]}")
    except (tarfile.TarError, EOFError, OSError, zlib_error(), json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BackupError(f"{archive}: damaged or not a backup ({type(exc).__name__}: {exc})") from None
    return dict(manifest)


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error


def _relocate_configs(paths: Iterable[Path], root: Path, prefixes: list[str]) -> None:
    from loaxa.gateway_install import relocate

    longest_first = tuple(sorted(prefixes, key=len, reverse=True))
    for p in paths:
        if p.suffix in (".yaml", ".yml", ".conf", ".acl") or p.name.endswith(".conf"):
            text = p.read_text(encoding="utf-8")
            for prefix in longest_first:
                text = text.replace(f"sqlite:///{prefix}", f"sqlite:///{root}{prefix}")
            p.write_text(relocate(text, root, longest_first), encoding="utf-8")


def _makedirs(d: Path, owner: str, group: str) -> None:
    """Create ``d`` and its missing parents, owned like the file that goes in (the scheduler's data
    directory must be the service user's, or SQLite cannot make its WAL file next to the database)."""
    missing = []
    while not d.exists():
        missing.append(d)
        d = d.parent
    for m in reversed(missing):
        m.mkdir(mode=0o750)
        _chown(m, owner, group)


def restore(archive: Path, root: Path = Path("/"), *, force: bool = False,
            database_url: str | None = None) -> list[Path]:
    """Restore ``archive`` under ``root``; returns the files written."""
    root = root.absolute()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".loaxa-restore-", dir=root))
    try:
        manifest = verify(archive, staging)
        db = manifest.get("database") or {}
        targets: list[tuple[Path, Path, dict[str, Any]]] = []
        for e in manifest["files"]:
            if e["member"] == db.get("member") and db.get("kind") != "sqlite":
                continue
            targets.append((staging / e["member"], root / e["path"].lstrip("/"), e))
        existing = [t for _s, t, _e in targets if t.exists()]
        if existing and not force:
            raise BackupError(f"{len(existing)} file(s) exist already, e.g. {existing[0]}; "
                              "stop the services and give --force to overwrite them")
        if db.get("kind") == "postgresql":  # first: if the database refuses, no file has changed
            _pg_restore(staging / db["member"], database_url)
        written: list[Path] = []
        for src, dest, e in targets:
            _makedirs(dest.parent, str(e.get("owner", "")), str(e.get("group", "")))
            if e["member"] == db.get("member"):  # the SQLite file: no stale WAL next to it
                for suffix in ("-wal", "-shm"):
                    dest.with_name(dest.name + suffix).unlink(missing_ok=True)
            src.chmod(int(e["mode"]) & 0o777)
            _chown(src, str(e.get("owner", "")), str(e.get("group", "")))
            os.replace(src, dest)
            written.append(dest)
        if root != Path("/"):
            _relocate_configs(written, root, list(manifest.get("roots", [])))
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _pg_restore(dump: Path, url: str | None) -> None:
    if not url:
        raise BackupError("this backup holds a PostgreSQL dump: give --database-url of the (empty) database to "
                          "restore it into")
    pg_restore, bare, env = _pg(url, "pg_restore")
    r = subprocess.run([pg_restore, "--no-owner", "--exit-on-error", f"--dbname={bare}", str(dump)],
                       capture_output=True, text=True, timeout=3600, env=env)
    if r.returncode != 0:
        raise BackupError(f"pg_restore failed: {r.stderr.strip()[-500:]}")
