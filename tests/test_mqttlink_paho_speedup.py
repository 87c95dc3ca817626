"""loaxa.mqttlink.speed_up_paho shares paho's lookup tables: paho behaves exactly as without it."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import json, sys
if sys.argv[1] == "patched":
    import loaxa.mqttlink
    assert loaxa.mqttlink.speed_up_paho()
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

out = []
p = Properties(PacketTypes.PUBLISH)
out.append(["empty", p.isEmpty(), str(p), p.pack().hex()])
p.MessageExpiryInterval = 30
p.ContentType = "application/json"
p.UserProperty = ("a", "1")
p.UserProperty = ("b", "2")
packed = p.pack()
out.append(["set", p.isEmpty(), str(p), packed.hex(), p.json()])
q = Properties(PacketTypes.PUBLISH)
q.unpack(packed)
out.append(["unpacked", str(q), q.json()])
q.clear()
out.append(["cleared", q.isEmpty(), str(q), q.pack().hex()])
q.unpack(packed)
q.unpack(b"\x00")
out.append(["unpacked empty over full", q.isEmpty(), str(q)])
try:
    Properties(PacketTypes.PUBACK).MessageExpiryInterval = 3
except Exception as exc:
    out.append(["wrong packet", type(exc).__name__])
try:
    Properties(PacketTypes.PUBLISH).NoSuchThing = 3
except Exception as exc:
    out.append(["unknown name", type(exc).__name__])
c = Properties(PacketTypes.CONNECT)
c.SessionExpiryInterval = 3600
out.append(["connect", c.pack().hex()])
for args in [(PacketTypes.PUBACK,), (PacketTypes.DISCONNECT,), (PacketTypes.CONNACK,), (PacketTypes.PUBACK, "Success"),
             (PacketTypes.SUBACK, "Granted QoS 1"), (PacketTypes.PUBACK, "Success", 0x87)]:
    r = ReasonCode(*args)
    r2 = ReasonCode(*args)
    out.append(["code", str(r), r.value, r.getName(), r.is_failure, r == r2, r.pack().hex(), len(r.names)])
r = ReasonCode(PacketTypes.PUBACK)
r.unpack(bytes([0x10]))
out.append(["code unpacked", str(r), r.value])
try:
    ReasonCode(PacketTypes.PUBACK, "No such reason")
except Exception as exc:
    out.append(["bad code", type(exc).__name__])
print(json.dumps(out))
"""


def run(mode: str) -> list[object]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True).stdout
    result: list[object] = json.loads(out)
    return result


def test_paho_behaves_the_same_with_shared_tables() -> None:
    plain, patched = run("plain"), run("patched")
    assert len(plain) == 16
    assert patched == plain
