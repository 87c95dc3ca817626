"""Speakers fetch media from their gateway, never from the centre (issue 15, point 3): the local set-up
(demo, tests) and provisioning give each gateway with IP speakers a media server, and the gateway
refuses a config with IP speakers and none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewayConfig, load_gateway_config
from loaxa.localsetup import gateway_config, make_signer, write_yaml
from loaxa.yamlconf import ConfigError

SPEAKERS = [{"id": "loa-01", "type": "ip_speaker"}, {"id": "loa-02", "type": "ip_speaker"}]


def _base(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    return gateway_config("xa-a", data_dir=tmp_path, uplink_url="mqtt://127.0.0.1:1", lan_url="mqtt://127.0.0.1:2",
                          signer=make_signer(), **kw)


def test_gateway_config_serves_media_from_the_gateway(tmp_path: Path) -> None:
    parsed = GatewayConfig.model_validate(_base(tmp_path, media_port=18091))
    assert parsed.broadcast.media_listen == "127.0.0.1:18091"
    assert parsed.broadcast.media_public_url == "http://127.0.0.1:18091"
    # with IP speakers and no port given, the local set-up takes a free one
    auto = GatewayConfig.model_validate(_base(tmp_path, devices=SPEAKERS)).broadcast
    assert auto.media_listen and auto.media_public_url == f"http://{auto.media_listen}"


@pytest.mark.parametrize("broadcast", [None, {"now_lead_ms": 500}, {"media_listen": "0.0.0.0:8091"}],
                         ids=["no-section", "no-media", "listen-only"])
def test_loader_refuses_ip_speakers_without_a_media_server(tmp_path: Path, broadcast: dict[str, Any] | None) -> None:
    cfg = _base(tmp_path, devices=SPEAKERS)
    del cfg["broadcast"]
    if broadcast is not None:
        cfg["broadcast"] = broadcast
    path = write_yaml(tmp_path / "gw.yaml", cfg)
    with pytest.raises(ConfigError) as err:
        load_gateway_config(path)
    [problem] = err.value.problems
    assert problem.path == str(path)
    assert problem.field == ("broadcast" if broadcast is None else "broadcast.media_public_url")
    assert "loa-01, loa-02" in problem.message and '"http://192.168.10.1:8091"' in problem.message
    assert "media_unavailable" in problem.message


def test_loader_accepts_gateways_without_ip_speakers(tmp_path: Path) -> None:
    cfg = _base(tmp_path, devices=[{"id": "mua", "type": "mqtt_sensor", "measurement": "rain"}])
    assert load_gateway_config(write_yaml(tmp_path / "gw.yaml", cfg)).broadcast.media_public_url is None


def test_provisioned_gateway_serves_media_on_its_lan_address() -> None:
    from loaxa.provision import CommuneState, DeviceEntry, gateway_yaml

    state = CommuneState(id="xa-b", name="Xã B", uplink_url="mqtts://loaxa.example:8883", lan_address="10.1.2.3",
                         devices=[DeviceEntry(id="loa-01", type="ip_speaker")])
    cfg = gateway_yaml(state, [], ca=False)
    assert cfg["broadcast"] == {"media_listen": "0.0.0.0:8091", "media_public_url": "http://10.1.2.3:8091"}
    given = gateway_yaml(state.model_copy(update={"media_public_url": "http://10.1.2.3:9000"}), [], ca=False)
    assert given["broadcast"]["media_public_url"] == "http://10.1.2.3:9000"


def test_doctor_passes_a_gateway_whose_speakers_fetch_from_it(tmp_path: Path) -> None:
    from loaxa.doctor import check_media_local

    good = check_media_local(GatewayConfig.model_validate(_base(tmp_path, devices=SPEAKERS, media_port=18091)))
    assert good.level == "ok"
