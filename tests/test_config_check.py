"""`loaxa config check`: every planted mistake is reported with its line; good files pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT, run_loaxa

BROKEN = """\
gateway:
  id: Xa_An_Binh
  colour: blue
uplink:
  url: http://central:1883
  keepalive_s: many
local_broker:
  username: gateway
trust:
  keys:
    - id: k1
      public_key: "not a key"
influx:
  api: v3
  url: http://influx:8086
devices:
  - id: loa-1
    type: ip_speaker
    volume: 300
  - id: s1
    type: mqtt_sensor
    measurment: water_level
  - id: x
    type: teapot
spool:
  max_bytes: 12
"""

# (line, field path, words the message must contain)
EXPECTED = [
    (2, "gateway.id", "pattern"),
    (3, "gateway.colour", "unknown key"),
    (5, "uplink.url", "mqtt://"),
    (6, "uplink.keepalive_s", "integer"),
    (8, "local_broker.url", "required"),
    (12, "trust.keys[0].public_key", "base64"),
    (14, "influx.api", "v1"),
    (19, "devices[0].volume", "100"),
    (22, "devices[1].measurment", "unknown key"),
    (23, "devices[2]", "teapot"),
    (26, "spool.max_bytes", "greater than"),
]


def test_every_planted_mistake_is_reported_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    before = path.read_bytes()
    result = run_loaxa("config", "check", str(path))
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith(str(path) + ":") and ": (" not in ln[:0]]
    problems = {}
    for line in lines:
        parts = line[len(str(path)) + 1:].split(": ", 2)
        if len(parts) == 3 and ":" in parts[0]:
            lineno, _col = parts[0].split(":")
            problems[parts[1]] = (int(lineno), parts[2])
    for lineno, field, words in EXPECTED:
        assert field in problems, f"{field} not reported; got {sorted(problems)}"
        assert problems[field][0] == lineno, (field, problems[field])
        assert words.lower() in problems[field][1].lower(), (field, problems[field])
    assert len(problems) == len(EXPECTED), sorted(problems)
    assert path.read_bytes() == before  # checking changes nothing


@pytest.mark.parametrize("text,line,words", [
    ("gateway:\n  id: a\n  id: b\n", 3, "duplicate key"),
    ("gateway:\n  id: [a\n", 3, "YAML syntax error"),
    ("gateway: {id: a}\n\tuplink: 1\n", 2, "YAML syntax error"),
    ("- just\n- a list\n", 1, "mapping"),
])
def test_yaml_level_errors(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(text)
    result = run_loaxa("config", "check", "--kind", "gateway", str(path))
    assert result.returncode == 2
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"{path}:{line}:"), first
    assert words in first


def test_missing_file_is_named(tmp_path: Path) -> None:
    result = run_loaxa("config", "check", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "nope.yaml:1:1" in result.stderr and "cannot read" in result.stderr


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.example.yaml")))
def test_example_configs_pass(name: str) -> None:
    result = run_loaxa("config", "check", str(ROOT / "configs" / name))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_secret_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config import load_gateway_config
    from loaxa.yamlconf import ConfigError

    (tmp_path / "pw").write_text("s3cret\n")
    base = (ROOT / "configs" / "gateway.example.yaml").read_text()
    text = base.replace("password: {file: secrets/uplink.password}", "password: {file: pw}")
    (tmp_path / "g.yaml").write_text(text)
    cfg = load_gateway_config(tmp_path / "g.yaml")
    assert cfg.uplink.password is not None and cfg.uplink.password.get() == "s3cret"
    monkeypatch.setenv("LOAXA_LOCAL_MQTT_PASSWORD", "lan-pw")
    assert cfg.local_broker.password is not None and cfg.local_broker.password.get() == "lan-pw"
    assert "s3cret" not in repr(cfg)
    (tmp_path / "inline.yaml").write_text(text.replace("password: {file: pw}", "password: hunter2"))
    with pytest.raises(ConfigError) as exc:
        load_gateway_config(tmp_path / "inline.yaml")
    assert "uplink.password" in str(exc.value) and "not inline" in str(exc.value)
