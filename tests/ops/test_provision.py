"""``loaxa commune add`` on a running system, ``loaxa gateway install`` on a fresh "Pi", and a broadcast to
the new commune that plays on its speakers; ``loaxa commune remove`` revokes the gateway's broker access.

Everything is real: the central Mosquitto (production ACL, accounts), the scheduler (in this process,
serving its HTTP API), the new commune's LAN Mosquitto started from the bundle's own config, the real
gateway (``loaxa gateway run``) and simulated speakers logging in with the bundle's device passwords.
The two communes already there are played by real MQTT clients (``TestGateway``).
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from loaxa.brokers import CentralBroker, _blocks
from loaxa.cli import main as loaxa_main
from loaxa.provision import (
    CentralAcl,
    DeviceEntry,
    ServerPaths,
    add_commune,
    config_with_gateway,
    config_without_gateway,
)
from loaxa.servers import ServerUnavailable, can_log_in, find_binary, free_port, wait_for_port
from scheduler.config import load_scheduler_config
from scheduler.service import Scheduler
from tests.conftest import ROOT, loaxa_env, spawn_loaxa
from tests.sched_support import Keys, TestGateway, add_token, bearer, make_tone, scheduler_config_dict, wait_for_async

NEW = "xa-ba"


def write_server(tmp: Path, central: str | CentralBroker, keys: Keys,
                 gateways: list[str]) -> tuple[Path, dict[str, Any]]:
    """A server's /etc/loaxa: scheduler.yaml with its signing key in secrets/signing.key (0600)."""
    etc = tmp / "server" / "etc" / "loaxa"
    (etc / "secrets").mkdir(parents=True)
    key = etc / "secrets" / "signing.key"
    key.write_text(keys.seed_b64 + "\n")
    key.chmod(0o600)
    cfg = scheduler_config_dict(tmp / "server", central, keys, gateways=gateways)
    cfg["signing"]["private_key"] = {"file": "secrets/signing.key"}
    cfg["scheduler"]["data_dir"] = str(tmp / "server" / "var" / "lib" / "loaxa" / "scheduler")
    text = "# the scheduler of the test district\n" + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)
    (etc / "scheduler.yaml").write_text(text)
    return etc, cfg


async def run_loaxa(*args: str, log: Path) -> int:
    """``loaxa ARGS`` as a child process (the scheduler in this process keeps running meanwhile)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "loaxa", *args, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, env=loaxa_env(), cwd=ROOT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    await asyncio.to_thread(_append, log, out)
    assert proc.returncode is not None
    return proc.returncode


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def start_lan_broker(pi: Path) -> subprocess.Popen[bytes]:
    """Mosquitto as Debian starts it: a main config that includes conf.d, where the bundle put its own."""
    main = pi / "etc" / "mosquitto" / "mosquitto.conf"
    # Debian's /etc/mosquitto/mosquitto.conf, with this test's paths (a conf.d file that repeats one of
    # its settings, e.g. persistence_location, stops Mosquitto from starting)
    lines = ["persistence true", f"persistence_location {pi / 'var' / 'lib' / 'mosquitto'}/",
             f"log_dest file {pi / 'mosquitto.log'}", "log_type error", "log_type warning",
             f"include_dir {pi / 'etc' / 'mosquitto' / 'conf.d'}"]
    if os.geteuid() == 0:  # as the Debian service would drop to 'mosquitto'; tests keep their own user
        lines.insert(0, f"user {pwd.getpwuid(os.getuid()).pw_name}")
    main.write_text("\n".join(lines) + "\n")
    return subprocess.Popen([find_binary("mosquitto", "mosquitto"), "-c", str(main)],
                            stdout=subprocess.DEVNULL, stderr=open(pi / "mosquitto.stderr", "wb"),
                            start_new_session=True)


async def test_commune_add_install_broadcast_remove(tmp_path: Path, central_broker_factory: Any) -> None:
    old = ["xa-mot", "xa-hai"]
    central: CentralBroker = central_broker_factory(gateways=old)
    keys = Keys()
    etc, _cfg = write_server(tmp_path, central, keys, old)
    sched_cfg = load_scheduler_config(etc / "scheduler.yaml")
    sched = Scheduler.build(sched_cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))
    existing = [TestGateway(central, gw, keys) for gw in old]
    for g in existing:
        await g.connect()
    token = add_token(sched.store.store)
    # as `loaxa tokens create` prints it: a line about the token, then the token
    (tmp_path / "token").write_text(f"token provisioning (admin:*)\n{token}\n")
    lan_port, local_port = free_port(), free_port()
    api = f"http://127.0.0.1:{sched_cfg.http.port}"
    assert central.proc is not None
    server_args = ["--root", str(etc), "--broker-passwd", str(central.workdir / "passwd"),
                   "--broker-acl", str(central.workdir / "acl"), "--reload", f"kill -HUP {central.proc.pid}"]
    log = tmp_path / "cli.log"
    pi = tmp_path / "pi"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        rc = await run_loaxa("commune", "add", NEW, "--name", "Xã Ba", "--speakers", "2",
                             "--sensor", "mucnuoc-ba:water_level", "--lan-address", "127.0.0.1",
                             "--lan-port", str(lan_port), "--local-port", str(local_port),
                             "--media-url", f"http://127.0.0.1:{free_port()}",
                             "--api", api, "--token-file", str(tmp_path / "token"), *server_args, log=log)
        assert rc == 0, log.read_text()
        bundle = etc / "communes" / NEW / f"bundle-{NEW}.tar.gz"
        assert bundle.stat().st_mode & 0o777 == 0o600
        # the gateway's account works on the central broker, and its ACL block is there
        uplink_pw = (etc / "communes" / NEW / "secrets" / "uplink.password").read_text().strip()
        await wait_for_async(lambda: asyncio.to_thread(can_log_in, central.port, NEW, uplink_pw), within=15,
                             what="the new gateway's account on the central broker")
        assert NEW in CentralAcl.parse((central.workdir / "acl").read_text()).gateways
        assert loaxa_main(["config", "check", str(etc / "scheduler.yaml")]) == 0
        assert "# the scheduler of the test district" in (etc / "scheduler.yaml").read_text()  # comments kept

        # on the Pi
        rc = await run_loaxa("gateway", "install", str(bundle), "--root", str(pi), log=log)
        assert rc == 0, log.read_text()
        gw_yaml = pi / "etc" / "loaxa" / "gateway.yaml"
        assert loaxa_main(["config", "check", str(gw_yaml)]) == 0
        for secret in ("secrets/uplink.password", "secrets/lan.password", "devices.json"):
            assert (pi / "etc" / "loaxa" / secret).stat().st_mode & 0o777 == 0o600, secret
        assert "password" not in yaml.safe_load(gw_yaml.read_text())["uplink"]["password"]  # a {file: …}
        for attempt in range(3):
            lan = start_lan_broker(pi)
            procs.append(lan)
            try:
                await asyncio.to_thread(wait_for_port, lan_port, lan, 15, "LAN mosquitto from the bundle",
                                        pi / "mosquitto.log")
                break
            except ServerUnavailable as exc:
                # the free ports were taken by another program on this shared machine meanwhile:
                # provision again with new ones (re-running commune add is safe), reinstall
                if "Address already in use" not in str(exc) or attempt == 2:
                    raise
                lan_port, local_port = free_port(), free_port()
                assert await run_loaxa("commune", "add", NEW, "--name", "Xã Ba", "--lan-port", str(lan_port),
                                       "--local-port", str(local_port), *server_args, log=log) == 0, log.read_text()
                assert await run_loaxa("gateway", "install", str(bundle), "--root", str(pi), log=log) == 0
        procs.append(spawn_loaxa("gateway", "run", "--config", str(gw_yaml), log=tmp_path / "gw.log"))
        procs.append(spawn_loaxa("sim", "speakers", "--broker", f"mqtt://127.0.0.1:{lan_port}", "--gateway", NEW,
                                 "--count", "2", "--credentials", str(pi / "etc" / "loaxa" / "devices.json"),
                                 log=tmp_path / "speakers.log"))

        async with httpx.AsyncClient(base_url=api, timeout=30, headers=bearer(token)) as http:
            async def online() -> bool:
                r = await http.get("/api/gateways")
                return any(g["id"] == NEW and g["status"] == "online" and g["commune"] == "Xã Ba" for g in r.json())

            try:
                await wait_for_async(online, within=60, what="the new gateway online at the scheduler")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\ngateway log: {(tmp_path / 'gw.log').read_text()[-3000:]}") from None
            media = await http.post("/api/media", content=make_tone(tmp_path / "t.wav", 1.0).read_bytes())
            assert media.status_code == 201, media.text
            r = await http.post("/api/broadcasts", json={"media_sha256": media.json()["sha256"], "targets": [NEW]})
            assert r.status_code == 201, r.text
            bid = r.json()["id"]

            async def played() -> bool:
                st = (await http.get(f"/api/broadcasts/{bid}")).json()
                states = {sp["device"]: sp["state"] for sp in st["speakers"]}
                return states == {"loa-01": "finished", "loa-02": "finished"}

            try:
                await wait_for_async(played, within=60, what="both new speakers finished")
            except AssertionError as exc:
                st = (await http.get(f"/api/broadcasts/{bid}")).json()
                raise AssertionError(f"{exc}\n{st}\ngateway log: {(tmp_path / 'gw.log').read_text()[-3000:]}") from None

        # re-running is safe: same secrets, same bundle identity
        rc = await run_loaxa("commune", "add", NEW, "--name", "Xã Ba", "--speakers", "2", *server_args, log=log)
        assert rc == 0, log.read_text()
        assert (etc / "communes" / NEW / "secrets" / "uplink.password").read_text().strip() == uplink_pw
        assert (etc / "scheduler.yaml").read_text().count(f"id: {NEW}") == 1

        # remove: the gateway's password no longer opens the central broker
        gw_log = tmp_path / "gw.log"
        offset = len(gw_log.read_bytes())
        rc = await run_loaxa("commune", "remove", NEW, *server_args, log=log)
        assert rc == 0, log.read_text()

        async def refused() -> bool:
            return not await asyncio.to_thread(can_log_in, central.port, NEW, uplink_pw)

        await wait_for_async(refused, within=15, what="the removed gateway refused by the central broker")
        # and the running gateway's own session is cut at the reload, and its reconnections refused
        async def cut() -> bool:
            text = (await asyncio.to_thread(gw_log.read_bytes))[offset:].decode(errors="replace")
            return "uplink: connection to" in text and "Not authorized" in text

        try:
            await wait_for_async(cut, within=30, what="the removed gateway's session closed by the broker")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{gw_log.read_bytes()[offset:].decode(errors='replace')}") from None
        assert NEW not in (central.workdir / "acl").read_text()
        assert not (etc / "communes" / NEW).exists()
        served = [g["id"] for g in yaml.safe_load((etc / "scheduler.yaml").read_text())["gateways"]]
        assert served == old
        # the other communes keep their access (a login probe as them would take over their session)
        assert CentralAcl.parse((central.workdir / "acl").read_text()).gateways == old
        assert {"xa-mot", "xa-hai"} <= set((central.workdir / "passwd").read_text().replace(":", "\n").split())
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(15)
        for g in existing:
            await g.disconnect()
        stop.set()
        await asyncio.wait_for(task, 15)


# ------------------------------------------------------------------ the pieces, without servers


SCHED = """\
scheduler:
  data_dir: /var/lib/loaxa/scheduler
# comment before gateways
gateways:
  - id: xa-an-binh
    commune: "Xã An Bình"
  - id: xa-phu-my
    commune: "Xã Phú Mỹ"

# a trailing comment that belongs to the next section
influx: {url: "http://x:8086", database: loaxa}
"""


def test_config_edit_keeps_comments_and_is_idempotent() -> None:
    added = config_with_gateway(SCHED, "xa-moi", 'Xã "Mới"')
    assert config_with_gateway(added, "xa-moi", 'Xã "Mới"') == added
    data = yaml.safe_load(added)
    assert [g["id"] for g in data["gateways"]] == ["xa-an-binh", "xa-phu-my", "xa-moi"]
    assert data["gateways"][2]["commune"] == 'Xã "Mới"'
    assert "# comment before gateways" in added and "# a trailing comment" in added
    assert config_without_gateway(added, "xa-moi") == SCHED
    emptied = config_without_gateway(config_without_gateway(SCHED, "xa-an-binh"), "xa-phu-my")
    assert yaml.safe_load(emptied)["gateways"] == []
    assert [g["id"] for g in yaml.safe_load(config_with_gateway(emptied, "xa-x", "X"))["gateways"]] == ["xa-x"]
    assert "gateways:" in config_with_gateway("scheduler: {}\n", "xa-x", "X")


def test_central_acl_keeps_readers_and_hand_written_blocks() -> None:
    from loaxa.brokers import central_acl

    text = central_acl(["xa-a"], ["viewer", "ioc"]) + "\nuser ingest\ntopic read $share/ingest/loaxa/v1/#\n"
    acl = CentralAcl.parse(text)
    assert acl.readers == ["viewer", "ioc"] and acl.gateways == ["xa-a"]
    acl.gateways.append("xa-b")
    _pre, blocks = _blocks(acl.render())
    assert set(blocks) == {"scheduler", "viewer", "ioc", "xa-a", "xa-b", "ingest"}


def test_remove_drops_a_hand_written_gateway_block_too(tmp_path: Path) -> None:
    from loaxa.provision import update_central_acl

    paths = ServerPaths(root=tmp_path, broker_passwd=tmp_path / "passwd", broker_acl=tmp_path / "acl")
    hand = "user scheduler\ntopic read loaxa/v1/#\n\nuser xa-old\ntopic write loaxa/v1/xa-old/#\n"
    (tmp_path / "acl").write_text(hand)
    update_central_acl(paths, remove=["xa-old"])
    assert "xa-old" not in (tmp_path / "acl").read_text()
    (tmp_path / "acl").write_text("user xa-old\ntopic write loaxa/v1/xa-old/#\n")
    update_central_acl(paths, add=["xa-old"])
    _pre, blocks = _blocks((tmp_path / "acl").read_text())
    assert "loaxa/v1/xa-old/#" not in blocks["xa-old"] and "topic read loaxa/v1/xa-old/cmd" in blocks["xa-old"]


def test_add_refuses_bad_input_and_changes_nothing(tmp_path: Path) -> None:
    paths = ServerPaths(root=tmp_path, broker_passwd=tmp_path / "passwd", broker_acl=tmp_path / "acl")
    from loaxa.provision import ProvisionError

    with pytest.raises(ProvisionError, match="scheduler config"):
        add_commune(paths, "xa-x", "X")
    with pytest.raises(ValueError):
        add_commune(paths, "Xa X", "X")
    with pytest.raises(ValueError):
        DeviceEntry(id="gateway!", type="ip_speaker")
    # values that end up in a broker config cannot add lines to it
    etc, _cfg = write_server(tmp_path, "mqtt://127.0.0.1:1883", Keys(), [])
    paths = ServerPaths(root=etc, broker_passwd=tmp_path / "passwd", broker_acl=tmp_path / "acl")
    before = (etc / "scheduler.yaml").read_text()
    for kw in ({"name": "Xã A\nallow_anonymous true"}, {"name": "A", "lan_address": "0.0.0.0\nallow_anonymous true"},
               {"name": "A", "uplink_url": "mqtt://h:1 x"}):
        with pytest.raises(ValueError, match=r"name|lan_address|uplink_url"):
            add_commune(paths, "xa-x", **kw)  # type: ignore[arg-type]
    assert not (tmp_path / "passwd").exists() and not (etc / "communes" / "xa-x").exists()
    assert (etc / "scheduler.yaml").read_text() == before


def test_install_refuses_a_damaged_bundle_and_another_identity(tmp_path: Path) -> None:
    import io
    import tarfile

    from loaxa.gateway_install import BundleError, install

    def bundle(name: str, files: dict[str, bytes], manifest: dict[str, Any]) -> Path:
        path = tmp_path / name
        with tarfile.open(path, "w:gz") as tar:
            for rel, data in {"MANIFEST.json": json.dumps(manifest).encode(), **files}.items():
                info = tarfile.TarInfo(rel)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return path

    good = {"etc/loaxa/x": b"abc"}
    import hashlib

    sha = hashlib.sha256(b"abc").hexdigest()
    meta: dict[str, Any] = {"gateway": "xa-a", "files": {"etc/loaxa/x": {"sha256": sha, "mode": "0o600"}}}
    with pytest.raises(BundleError, match="damaged"):
        install(bundle("b1.tar.gz", {"etc/loaxa/x": b"abd"}, meta), tmp_path / "root")
    with pytest.raises(BundleError, match="unsafe"):
        install(bundle("b2.tar.gz", {**good, "../evil": b""}, meta | {"files": {**meta["files"], "../evil": {}}}),
                tmp_path / "root")
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(BundleError, match="not a readable bundle"):
        install(tmp_path / "junk.tar.gz", tmp_path / "root")
    assert not (tmp_path / "root").exists()


def test_device_add_and_reinstall(tmp_path: Path) -> None:
    """``loaxa device add`` rebuilds the bundle with one more account; secrets already made stay; the Pi
    takes the new bundle over the old one, and refuses another commune's bundle without --force."""
    import tarfile

    from loaxa.gateway_install import BundleError, install
    from loaxa.provision import ProvisionError, add_device

    etc, _cfg = write_server(tmp_path, "mqtt://127.0.0.1:1883", Keys(), [])
    paths = ServerPaths(root=etc, broker_passwd=tmp_path / "passwd", broker_acl=tmp_path / "acl")
    add_commune(paths, "xa-a", "Xã A", devices=[DeviceEntry(id="loa-01", type="ip_speaker")])
    lan_pw = (etc / "communes" / "xa-a" / "secrets" / "lan-gateway.password").read_text()
    pi = tmp_path / "pi"
    install(paths.bundle_path("xa-a"), pi)
    add_device(paths, "xa-a", "mua-cho", "mqtt_sensor", "rain")
    add_device(paths, "xa-a", "mua-cho", "mqtt_sensor", "rain")  # again: no second entry
    with pytest.raises(ProvisionError, match="another type"):
        add_device(paths, "xa-a", "mua-cho", "ip_speaker")
    with pytest.raises(ProvisionError, match="no commune"):
        add_device(paths, "xa-zz", "loa-01", "ip_speaker")
    assert (etc / "communes" / "xa-a" / "secrets" / "lan-gateway.password").read_text() == lan_pw
    with tarfile.open(paths.bundle_path("xa-a")) as tar:
        passwd = tar.extractfile("etc/mosquitto/loaxa-lan.passwd").read().decode()  # type: ignore[union-attr]
    assert sorted(line.split(":")[0] for line in passwd.splitlines()) == ["gateway", "loa-01", "mua-cho"]
    install(paths.bundle_path("xa-a"), pi)
    cfg = yaml.safe_load((pi / "etc/loaxa/gateway.yaml").read_text())
    assert [(d["id"], d.get("measurement")) for d in cfg["devices"]] == [("loa-01", None), ("mua-cho", "rain")]
    assert set(json.loads((pi / "etc/loaxa/devices.json").read_text())) == {"loa-01", "mua-cho"}
    assert loaxa_main(["config", "check", str(pi / "etc/loaxa/gateway.yaml")]) == 0

    # an unpacked bundle (a folder) installs the same way
    unpacked = tmp_path / "unpacked"
    with tarfile.open(paths.bundle_path("xa-a")) as tar:
        tar.extractall(unpacked, filter="data")
    assert install(unpacked, tmp_path / "pi2")[0] == "xa-a"
    assert (tmp_path / "pi2/etc/loaxa/gateway.yaml").read_text() == (pi / "etc/loaxa/gateway.yaml").read_text().replace(
        str(pi), str(tmp_path / "pi2"))

    add_commune(paths, "xa-b", "Xã B")
    with pytest.raises(BundleError, match="is gateway 'xa-a'"):
        install(paths.bundle_path("xa-b"), pi)
    assert install(paths.bundle_path("xa-b"), pi, force=True)[0] == "xa-b"


def test_rotation_trusts_the_next_key_in_every_rebuilt_bundle(tmp_path: Path) -> None:
    import tarfile

    from loaxa.provision import ProvisionError, rebuild_bundles
    from protocol.signing import public_key_b64

    keys, nxt = Keys(), Keys()
    etc, _cfg = write_server(tmp_path, "mqtt://127.0.0.1:1883", keys, [])
    paths = ServerPaths(root=etc, broker_passwd=tmp_path / "passwd", broker_acl=tmp_path / "acl")
    for gw in ("xa-a", "xa-b"):
        add_commune(paths, gw, gw.upper())
    (etc / "trusted-keys.txt").write_text(f"# the next key\n{nxt.key_id} {public_key_b64(nxt.private.public_key())}\n")
    assert len(rebuild_bundles(paths)) == 2
    for gw in ("xa-a", "xa-b"):
        with tarfile.open(paths.bundle_path(gw)) as tar:
            cfg = yaml.safe_load(tar.extractfile("etc/loaxa/gateway.yaml").read())  # type: ignore[union-attr]
        assert [k["id"] for k in cfg["trust"]["keys"]] == [keys.key_id, nxt.key_id]
    (etc / "trusted-keys.txt").write_text(f"{keys.key_id} {public_key_b64(nxt.private.public_key())}\n")
    with pytest.raises(ProvisionError, match=r"trusted-keys.txt:1: .* is not the id of this key"):
        rebuild_bundles(paths, ["xa-a"])


def test_bundle_carries_the_ca_of_the_central_broker(tmp_path: Path) -> None:
    """With TLS to the central broker (``broker.ca_file`` in the scheduler config, from ``loaxa tls init``),
    the bundle brings the CA certificate and the gateway's uplink checks the broker against it."""
    import tarfile

    from loaxa.gateway_install import install
    from loaxa.tlsca import init_ca

    etc, _cfg = write_server(tmp_path, "mqtts://mqtt.huyen.example.vn:8883", Keys(), [])
    ca = init_ca(etc / "tls")
    text = (etc / "scheduler.yaml").read_text()
    (etc / "scheduler.yaml").write_text(text.replace("broker:\n", "broker:\n  ca_file: tls/ca.crt\n", 1))
    paths = ServerPaths(root=etc, broker_passwd=tmp_path / "passwd", broker_acl=tmp_path / "acl")
    add_commune(paths, "xa-a", "Xã A")
    with tarfile.open(paths.bundle_path("xa-a")) as tar:
        assert tar.extractfile("etc/loaxa/ca.crt").read() == ca.ca_cert.read_bytes()  # type: ignore[union-attr]
    pi = tmp_path / "pi"
    install(paths.bundle_path("xa-a"), pi)
    uplink = yaml.safe_load((pi / "etc/loaxa/gateway.yaml").read_text())["uplink"]
    assert uplink["url"] == "mqtts://mqtt.huyen.example.vn:8883"
    assert Path(uplink["ca_file"]) == pi / "etc/loaxa/ca.crt" and Path(uplink["ca_file"]).exists()


def test_unusual_gateways_layout_is_refused_not_mangled(tmp_path: Path) -> None:
    from loaxa.provision import ProvisionError, remove_commune

    etc, _cfg = write_server(tmp_path, "mqtt://127.0.0.1:1883", Keys(), [])
    cfg = etc / "scheduler.yaml"
    cfg.write_text(cfg.read_text().replace("gateways: []", "gateways:\n- commune: Xã A\n  id: xa-a"))
    before = cfg.read_text()
    paths = ServerPaths(root=etc, broker_passwd=tmp_path / "passwd", broker_acl=tmp_path / "acl")
    with pytest.raises(ProvisionError, match="edit that list by hand"):
        remove_commune(paths, "xa-a")
    assert cfg.read_text() == before
