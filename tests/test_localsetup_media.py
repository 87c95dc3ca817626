"""The local set-up (demo, tests) gives each gateway a media server for its speakers (issue 15, point 3)."""

from __future__ import annotations

from pathlib import Path

from gateway.config import GatewayConfig
from loaxa.localsetup import gateway_config, make_signer


def test_gateway_config_serves_media_from_the_gateway(tmp_path: Path) -> None:
    cfg = gateway_config("xa-a", data_dir=tmp_path, uplink_url="mqtt://127.0.0.1:1", lan_url="mqtt://127.0.0.1:2",
                         signer=make_signer(), media_port=18091)
    parsed = GatewayConfig.model_validate(cfg)
    assert parsed.broadcast.media_listen == "127.0.0.1:18091"
    assert parsed.broadcast.media_public_url == "http://127.0.0.1:18091"


def test_doctor_fails_a_gateway_whose_speakers_would_fetch_from_the_centre(tmp_path: Path) -> None:
    from loaxa.doctor import check_media_local

    speakers = [{"id": "loa-01", "type": "ip_speaker"}]
    base = {"data_dir": tmp_path, "uplink_url": "mqtt://127.0.0.1:1", "lan_url": "mqtt://127.0.0.1:2",
            "signer": make_signer(), "devices": speakers}
    bad = check_media_local(GatewayConfig.model_validate(gateway_config("xa-a", **base)))
    good = check_media_local(GatewayConfig.model_validate(gateway_config("xa-a", **base, media_port=18091)))
    assert bad.level == "fail" and "media_unavailable" in bad.detail and "media_public_url" in bad.fix
    assert good.level == "ok"
