"""`loaxa doctor` against real servers: a healthy gateway config passes; a wrong password, a stopped
broker, an invalid config, an expiring certificate and a readable signing key are each named with a fix."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from loaxa.cli import main as loaxa_main
from loaxa.doctor import check_certs, check_clock, check_mqtt, diagnose
from loaxa.localsetup import gateway_config, make_signer, scheduler_config, write_yaml
from loaxa.mqttconf import MqttEndpoint
from loaxa.servers import InfluxDB1, Mosquitto, MosquittoUser
from loaxa.tlsca import init_ca, issue_server

GW, PW = "xa-an-binh", "gw-secret"


@pytest.fixture
def broker(mosquitto_factory: Callable[..., Mosquitto]) -> Mosquitto:
    return mosquitto_factory("central", users=[MosquittoUser(GW, PW, [f"topic readwrite loaxa/v1/{GW}/#"])])


def _gateway_yaml(tmp_path: Path, broker: Mosquitto, password: str, influx: dict[str, Any] | None = None) -> Path:
    cfg = gateway_config(GW, data_dir=tmp_path / "gw", uplink_url=broker.url, lan_url=broker.url,
                         signer=make_signer(), uplink_auth=(GW, password), influx=influx)
    cfg["local_broker"]["username"] = GW
    cfg["local_broker"]["password"] = {"value": password}
    return write_yaml(tmp_path / "gateway.yaml", cfg)


def _by_name(results: list[Any]) -> dict[str, Any]:
    return {r.name: r for r in results}


def test_healthy_gateway_passes(tmp_path: Path, broker: Mosquitto, influxdb1: InfluxDB1,
                                capsys: pytest.CaptureFixture[str]) -> None:
    path = _gateway_yaml(tmp_path, broker, PW, influx={"api": "v1", "url": influxdb1.url, "database": "loaxa"})
    results = _by_name(list(diagnose(path, None, 5)))
    assert results["uplink (central broker)"].level == "ok"
    assert results["commune LAN broker"].level == "ok"
    assert results["InfluxDB"].level == "ok" and "1.6" in results["InfluxDB"].detail
    assert results["config"].level == "ok"
    # the clock check depends on the machine; the exit code counts only failures
    rc = loaxa_main(["doctor", "--config", str(path)])
    out = capsys.readouterr().out
    assert ("✘" in out) == (rc == 1)


def test_wrong_password_is_named_with_a_fix(tmp_path: Path, broker: Mosquitto) -> None:
    path = _gateway_yaml(tmp_path, broker, "not-the-password")
    r = _by_name(list(diagnose(path, None, 5)))["uplink (central broker)"]
    assert r.level == "fail" and "refused" in r.detail and "password" in r.fix


def test_stopped_broker_is_unreachable(tmp_path: Path, broker: Mosquitto) -> None:
    path = _gateway_yaml(tmp_path, broker, PW)
    broker.stop()
    r = _by_name(list(diagnose(path, None, 3)))["commune LAN broker"]
    assert r.level == "fail" and "unreachable" in r.detail


def test_invalid_config_stops_at_the_config(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("gateway:\n  id: Xa An Binh\n")
    results = list(diagnose(path, "gateway", 3))
    assert [r.level for r in results] == ["fail"]
    assert "loaxa config check" in results[0].fix


def test_expiring_and_expired_certificates(tmp_path: Path) -> None:
    d = tmp_path / "tls"
    init_ca(d)
    issue_server(d, ["127.0.0.1"], days=10)
    ep = MqttEndpoint(url="mqtts://127.0.0.1:8883", ca_file=d / "server.crt")
    [soon] = check_certs("uplink", ep)
    assert soon.level == "warn" and "loaxa tls" in soon.fix
    [expired] = check_certs("uplink", ep, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=11))
    assert expired.level == "fail" and "EXPIRED" in expired.detail


def test_scheduler_key_readable_by_others_fails(tmp_path: Path, broker: Mosquitto) -> None:
    key = tmp_path / "signing.key"
    cfg = scheduler_config(data_dir=tmp_path / "sched", broker_url=broker.url, signer=make_signer(),
                           key_file=key, http_port=8080)
    path = write_yaml(tmp_path / "scheduler.yaml", cfg)
    assert _by_name(list(diagnose(path, None, 3)))["signing key"].level == "ok"
    key.chmod(0o644)
    r = _by_name(list(diagnose(path, None, 3)))["signing key"]
    assert r.level == "fail" and f"chmod 600 {key}" in r.fix


def test_clock_states() -> None:
    assert check_clock(lambda _cmd: "yes\n").level == "ok"
    assert check_clock(lambda _cmd: "no\n").level == "fail"


def test_mqtt_check_does_not_kick_the_running_service(broker: Mosquitto) -> None:
    """The doctor uses a client id of its own: the node's service stays connected while it checks."""
    import threading

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    service = paho.Client(CallbackAPIVersion.VERSION2, client_id=GW, protocol=paho.MQTTv5)
    service.username_pw_set(GW, PW)
    dropped = threading.Event()
    service.on_disconnect = lambda *_a: dropped.set()
    service.connect("127.0.0.1", broker.port)
    service.loop_start()
    try:
        ep = MqttEndpoint(url=broker.url, username=GW, password={"value": PW}, client_id=GW)
        assert check_mqtt("uplink", ep, 5).level == "ok"
        assert not dropped.wait(1.0)
    finally:
        service.disconnect()
        service.loop_stop()
