"""``loaxa backup create|restore`` against a running scheduler: the backup is taken online, restored into an
empty directory, and the restored scheduler serves the old broadcasts (with the old API token) and signs
with the same key: a gateway that trusts only the old key accepts its new commands.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from loaxa.backup import restore
from loaxa.brokers import CentralBroker
from loaxa.cli import main as loaxa_main
from loaxa.servers import PostgreSQL
from scheduler.config import load_scheduler_config
from scheduler.service import Scheduler
from tests.ops.test_provision import run_loaxa, write_server
from tests.sched_support import Keys, TestGateway, add_token, bearer, make_tone, wait_for_async

GW = "xa-mot"


async def _serve(cfg_path: Path) -> tuple[Scheduler, asyncio.Event, asyncio.Task[None]]:
    sched = Scheduler.build(load_scheduler_config(cfg_path))
    stop = asyncio.Event()
    return sched, stop, asyncio.create_task(sched.run(stop))


async def _broadcast(http: httpx.AsyncClient, audio: bytes) -> str:
    media = await http.post("/api/media", content=audio)
    assert media.status_code == 201, media.text
    r = await http.post("/api/broadcasts", json={"media_sha256": media.json()["sha256"], "targets": [GW]})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _until_up(http: httpx.AsyncClient) -> None:
    async def up() -> bool:
        try:
            return (await http.get("/api/gateways")).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_for_async(up, within=30, what="the scheduler's API")


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
async def test_backup_online_restore_elsewhere_same_key_same_broadcasts(
        tmp_path: Path, central_broker_factory: Any, db: str, request: pytest.FixtureRequest) -> None:
    central: CentralBroker = central_broker_factory(gateways=[GW])
    keys = Keys()
    etc, _cfg = write_server(tmp_path, central, keys, [GW])
    pg: PostgreSQL | None = None
    if db == "postgresql":
        pg = request.getfixturevalue("postgres_server")
        assert pg is not None
        pg_url = request.getfixturevalue("postgres_url")
        text = (etc / "scheduler.yaml").read_text()
        (etc / "scheduler.yaml").write_text(text.replace("scheduler:\n", f"scheduler:\n  database_url: {pg_url}\n", 1))
        assert await run_loaxa("db", "upgrade", "--config", str(etc / "scheduler.yaml"), log=tmp_path / "db.log") == 0
    gw = TestGateway(central, GW, keys)
    await gw.connect()
    log = tmp_path / "cli.log"
    archive = tmp_path / "backups" / "b.tar.gz"
    sched, stop, task = await _serve(etc / "scheduler.yaml")
    try:
        token = add_token(sched.store.store)
        api = f"http://127.0.0.1:{sched.config.http.port}"
        async with httpx.AsyncClient(base_url=api, timeout=30, headers=bearer(token)) as http:
            await _until_up(http)
            bid = await _broadcast(http, make_tone(tmp_path / "t.wav", 1.0).read_bytes())
            await wait_for_async(lambda: _n(gw), within=30, what="the plan at the gateway")
            # a provisioned commune is part of the server's state too
            rc = await run_loaxa("commune", "add", "xa-moi", "--name", "Xã Mới", "--speakers", "1", "--root", str(etc),
                                 "--broker-passwd", str(tmp_path / "mosq" / "loaxa.passwd"),
                                 "--broker-acl", str(tmp_path / "mosq" / "loaxa.acl"), "--reload", "", log=log)
            assert rc == 0, log.read_text()
            # online: the scheduler keeps running (and writing) while the backup is taken
            rc = await run_loaxa("backup", "create", "--config", str(etc / "scheduler.yaml"), "--out", str(archive),
                                 "--broker-file", str(tmp_path / "mosq"), log=log)
            assert rc == 0, log.read_text()
            old = (await http.get(f"/api/broadcasts/{bid}")).json()
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert archive.stat().st_mode & 0o777 == 0o600

    # into an empty directory (and, for PostgreSQL, an empty database: the old one is lost)
    new_root = tmp_path / "restored"
    extra: list[str] = []
    if pg is not None:
        name = pg_url.rsplit("/", 1)[1]
        pg.drop_database(name)
        pg.create_database(name)
        extra = ["--database-url", pg_url]
    rc = await run_loaxa("backup", "restore", str(archive), "--root", str(new_root), *extra, log=log)
    assert rc == 0, log.read_text()
    restored_cfg = new_root / str(etc / "scheduler.yaml").lstrip("/")
    assert loaxa_main(["config", "check", str(restored_cfg)]) == 0
    cfg = load_scheduler_config(restored_cfg)
    assert str(cfg.scheduler.data_dir).startswith(str(new_root))
    assert (new_root / str(etc / "communes" / "xa-moi" / "bundle-xa-moi.tar.gz").lstrip("/")).exists()
    assert (new_root / str(tmp_path / "mosq" / "loaxa.passwd").lstrip("/")).exists()
    key = new_root / str(etc / "secrets" / "signing.key").lstrip("/")
    assert key.stat().st_mode & 0o777 == 0o600

    sched2, stop2, task2 = await _serve(restored_cfg)
    try:
        assert sched2.dispatcher.signer.key_id == keys.key_id
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cfg.http.port}", timeout=30,
                                     headers=bearer(token)) as http:
            await _until_up(http)
            again = (await http.get(f"/api/broadcasts/{bid}")).json()
            assert again["id"] == bid and again["media"] == old["media"] and again["created_at"] == old["created_at"]
            sha = old["media"]["sha256"]
            assert any(p.name.startswith(sha) for p in sched2.library.root.rglob("*")), "media file not restored"
            before = await _n(gw)
            await _broadcast(http, make_tone(tmp_path / "t2.wav", 1.5).read_bytes())
            await wait_for_async(lambda: _more(gw, before), within=30, what="a new command from the restored scheduler")
            assert gw.received[-1].verified, gw.received[-1].error  # the gateway trusts only the old key
    finally:
        stop2.set()
        await asyncio.wait_for(task2, 15)
        await gw.disconnect()

    # never over existing files without --force; with --force it does
    assert await run_loaxa("backup", "restore", str(archive), "--root", str(new_root), *extra, log=log) == 2
    assert "exist already" in log.read_text()
    if pg is None:  # (a PostgreSQL dump goes into an empty database only)
        assert await run_loaxa("backup", "restore", str(archive), "--root", str(new_root), "--force", log=log) == 0


async def _n(gw: TestGateway) -> int:
    return len(gw.received)


async def _more(gw: TestGateway, n: int) -> bool:
    return len(gw.received) > n


def _archive(tmp: Path, files: dict[str, bytes]) -> Path:
    src = tmp / "src"
    (src / "etc").mkdir(parents=True)
    for name, data in files.items():
        (src / "etc" / name).write_bytes(data)
    (src / "cfg.yaml").write_text(
        "scheduler: {data_dir: %s}\nbroker: {url: 'mqtt://127.0.0.1:1'}\n"
        "signing: {private_key: {file: etc/key}}\n" % (src / "data"))
    from loaxa.backup import create

    out = tmp / "a.tar.gz"
    create(src / "cfg.yaml", out, broker_files=())
    return out


def test_restore_refuses_damaged_archives_and_writes_nothing(tmp_path: Path) -> None:
    from loaxa.backup import BackupError
    from tests.sched_support import Keys as K

    out = _archive(tmp_path, {"key": (K().seed_b64 + "\n").encode(), "big": bytes(range(256)) * 400})
    target = tmp_path / "target"

    def refused(path: Path, why: str) -> None:
        try:
            restore(path, target)
        except BackupError as exc:
            assert why in str(exc), exc
        else:
            raise AssertionError(f"{path} was restored")
        assert not any(p.is_file() for p in target.rglob("*")), "a damaged archive wrote files"

    raw = out.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    refused(cut, "damaged")
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0xFF
    (tmp_path / "flip.tar.gz").write_bytes(bytes(flipped))
    refused(tmp_path / "flip.tar.gz", "damaged")

    # a member changed and the archive re-packed cleanly: the manifest's checksum catches it
    with tarfile.open(out) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for m, data in members:
            if m.name.endswith("/big"):
                data = data[:-1] + b"X"
            tar.addfile(m, io.BytesIO(data))
    (tmp_path / "tampered.tar.gz").write_bytes(buf.getvalue())
    refused(tmp_path / "tampered.tar.gz", "checksum")

    # an archive that is not a backup at all
    (tmp_path / "other.tar.gz").write_bytes(gzip.compress(b"hello"))
    refused(tmp_path / "other.tar.gz", "damaged")
    manifest = json.loads(tarfile.open(out).extractfile("MANIFEST.json").read())  # type: ignore[union-attr]
    assert all(len(e["sha256"]) == 64 for e in manifest["files"])
    assert restore(out, target)  # the good one restores


def test_restore_gives_files_and_new_folders_their_owners_back(tmp_path: Path) -> None:
    """As root, a restored file belongs to the account it belonged to (by name), and so do the folders
    made for it: a scheduler.db owned by root would stop the `loaxa` service from writing."""
    import os
    import pwd

    if os.geteuid() != 0:
        pytest.skip("only root can give files to another account")
    from tests.sched_support import Keys as K

    nobody = pwd.getpwnam("nobody")
    out_dir = tmp_path / "a"
    out_dir.mkdir()
    archive = _archive(out_dir, {"key": (K().seed_b64 + "\n").encode()})
    key = out_dir / "src" / "etc" / "key"
    os.chown(key, nobody.pw_uid, nobody.pw_gid)
    archive = _archive_again(out_dir)
    target = tmp_path / "target"
    restore(archive, target)
    restored = target / str(key).lstrip("/")
    assert restored.stat().st_uid == nobody.pw_uid
    assert restored.parent.stat().st_uid == nobody.pw_uid  # made by the restore, for this file


def _archive_again(tmp: Path) -> Path:
    from loaxa.backup import create

    out = tmp / "again.tar.gz"
    create(tmp / "src" / "cfg.yaml", out, broker_files=())
    return out
