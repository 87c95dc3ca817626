"""docs/firmware-protocol.md is the firmware engineer's contract: its CRC test vectors and byte-level
examples must be what the code produces, and its C snippets must agree with the Python implementation."""

from __future__ import annotations

import random
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from firmware_bridge import cobs
from firmware_bridge.crc import crc16
from firmware_bridge.frame import Frame, decode_frame

DOC = Path(__file__).resolve().parents[2] / "docs" / "firmware-protocol.md"
TEXT = DOC.read_text(encoding="utf-8")


def _hex(s: str) -> bytes:
    s = s.strip()
    return b"" if s in ("(none)", "–", "-") else bytes.fromhex(s)


def crc_vectors() -> list[tuple[str, bytes, int]]:
    section = TEXT.split("### CRC test vectors", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        m = re.match(r"^\|\s*(.+?)\s*\|\s*(.+?)\s*\|\s*0x([0-9A-Fa-f]{4})\s*\|$", line)
        if not m:
            continue
        name, data, crc = m.groups()
        if data == "00..FF":
            raw = bytes(range(256))
        else:
            raw = _hex(data)
        rows.append((name, raw, int(crc, 16)))
    return rows


def examples() -> list[tuple[str, dict[str, int], bytes, bytes, bytes]]:
    out = []
    for block in re.findall(r"```text\n(example:.*?)```", TEXT, flags=re.S):
        lines = dict(line.split(":", 1) for line in block.strip().splitlines() if ":" in line.split(" ")[0])
        head = block.strip().splitlines()[1]
        fields = {k: int(v, 0) for k, v in (kv.split("=") for kv in head.split())}
        out.append((lines["example"].strip(), fields, _hex(lines["payload"]), _hex(lines["raw"]),
                    _hex(lines["wire"])))
    return out


def test_doc_has_vectors() -> None:
    assert len(crc_vectors()) >= 5
    assert len(examples()) >= 6


@pytest.mark.parametrize(("name", "data", "crc"), crc_vectors(), ids=[v[0] for v in crc_vectors()])
def test_crc_vectors_in_doc(name: str, data: bytes, crc: int) -> None:
    assert crc16(data) == crc, name


@pytest.mark.parametrize(("name", "fields", "payload", "raw", "wire"), examples(), ids=[e[0][:30] for e in examples()])
def test_frame_examples_in_doc(name: str, fields: dict[str, int], payload: bytes, raw: bytes, wire: bytes) -> None:
    frame = Frame(address=fields["address"], type=fields["type"], seq=fields["seq"], payload=payload,
                  flags=fields["flags"])
    assert frame.raw() == raw, name
    assert frame.encode() == wire, name
    assert decode_frame(wire) == frame


HARNESS = r"""
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
%s
int main(void) {
    static uint8_t in[2048], enc[2100], dec[2100];
    unsigned char hdr[2];
    while (fread(hdr, 1, 2, stdin) == 2) {
        size_t n = hdr[0] | (hdr[1] << 8);
        if (fread(in, 1, n, stdin) != n) return 2;
        size_t e = cobs_encode(in, n, enc);
        int d = cobs_decode(enc, e, dec, sizeof dec);
        printf("%%04X ", crc16(in, n));
        for (size_t i = 0; i < e; i++) printf("%%02X", enc[i]);
        printf(" %%d\n", d == (int)n && memcmp(dec, in, n) == 0);
    }
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
def test_c_snippets_in_doc_agree_with_python(tmp_path: Path) -> None:
    snippets = re.findall(r"```c\n(.*?)```", TEXT, flags=re.S)
    assert len(snippets) == 3
    src = tmp_path / "harness.c"
    src.write_text("#include <string.h>\n" + HARNESS % "\n".join(snippets))
    exe = tmp_path / "harness"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Werror", "-O1", "-o", str(exe), str(src)], check=True)
    rng = random.Random(4)
    cases = [b"", b"\x00", b"123456789", bytes(range(1, 255)), bytes(254) , bytes([1] * 254) + b"\x00"]
    cases += [rng.randbytes(rng.randrange(0, 1100)) for _ in range(150)]
    cases += [bytes(rng.choice((0, rng.randrange(1, 256))) for _ in range(rng.randrange(1, 600))) for _ in range(100)]
    stdin = b"".join(struct.pack("<H", len(c)) + c for c in cases)
    out = subprocess.run([str(exe)], input=stdin, capture_output=True, check=True).stdout.decode().splitlines()
    assert len(out) == len(cases)
    for case, line in zip(cases, out, strict=True):
        crc, enc, ok = line.split(" ")
        assert int(crc, 16) == crc16(case)
        assert bytes.fromhex(enc) == cobs.encode(case)
        assert ok == "1"
