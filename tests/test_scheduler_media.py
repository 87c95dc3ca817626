"""Media library and HTTP media serving: real ffmpeg/ffprobe/espeak-ng, real HTTP server, real SQLite."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loaxa.servers import Mosquitto
from protocol.signing import now_ms
from scheduler.config import SchedulerConfig
from scheduler.http import parse_range
from scheduler.service import Scheduler, SetupError
from tests.sched_support import Keys, add_token, bearer, make_tone, scheduler_config_dict, wait_for_async

MAX_UPLOAD = 200_000


@pytest.fixture
async def server(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[tuple[Scheduler, httpx.AsyncClient]]:
    cfg = SchedulerConfig.model_validate(
        scheduler_config_dict(
            tmp_path,
            mosquitto.url,
            Keys(),
            http={"max_upload_bytes": MAX_UPLOAD},
            media={"max_duration_s": 30},
        )
    )
    sched = Scheduler.build(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))
    headers = bearer(add_token(sched.store.store, "operator", ["xa-test"]))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cfg.http.port}", timeout=30, headers=headers) as http:

        async def up() -> bool:
            try:
                return (await http.get("/api/health")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_for_async(up, what="HTTP up")
        yield sched, http
    stop.set()
    await asyncio.wait_for(task, 15)


def stored_files(sched: Scheduler) -> list[Path]:
    root = sched.library.root
    return sorted(p for p in root.rglob("*") if p.is_file())


def media_rows(sched: Scheduler) -> int:
    db = sched.config.scheduler.data_dir / "scheduler.db"
    with sqlite3.connect(db) as con:
        return int(con.execute("SELECT count(*) FROM media").fetchone()[0])


async def test_upload_is_transcoded_and_served_with_ranges(
    server: tuple[Scheduler, httpx.AsyncClient], tmp_path: Path
) -> None:
    sched, http = server
    src = make_tone(tmp_path / "tone.wav", 2.0)
    r = await http.post("/api/media", params={"name": "thông báo.wav"}, content=src.read_bytes())
    assert r.status_code == 201, r.text
    m = r.json()
    assert m["content_type"] == "audio/mpeg" and 1900 <= m["duration_ms"] <= 2200
    assert m["original_name"] == "thông báo.wav"
    [path] = stored_files(sched)
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == m["sha256"] and len(data) == m["bytes"]
    # the database is SQLite in WAL mode
    with sqlite3.connect(sched.config.scheduler.data_dir / "scheduler.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # the same audio again: same address, nothing new stored
    r2 = await http.post("/api/media", content=src.read_bytes())
    assert r2.json()["sha256"] == m["sha256"] and len(stored_files(sched)) == 1

    url = signed(sched, m["sha256"])
    size = len(data)
    full = await http.get(url)
    assert full.status_code == 200 and full.content == data
    assert full.headers["etag"] == f'"{m["sha256"]}"' and full.headers["accept-ranges"] == "bytes"
    assert full.headers["content-type"] == "audio/mpeg"

    part = await http.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{size}" and part.headers["content-length"] == "10"

    tail = await http.get(url, headers={"Range": "bytes=-100"})
    assert tail.status_code == 206 and tail.content == data[-100:]
    opened = await http.get(url, headers={"Range": f"bytes={size - 5}-"})
    assert opened.status_code == 206 and opened.content == data[-5:]
    clipped = await http.get(url, headers={"Range": f"bytes={size - 3}-{size + 1000}"})
    assert clipped.status_code == 206 and clipped.content == data[-3:]

    beyond = await http.get(url, headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{size}"

    head = await http.head(url)
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(size)
    head_part = await http.head(url, headers={"Range": "bytes=0-0"})
    assert head_part.status_code == 206 and head_part.headers["content-length"] == "1"

    cached = await http.get(url, headers={"If-None-Match": full.headers["etag"]})
    assert cached.status_code == 304 and cached.content == b""
    stale = await http.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == data

    assert (await http.get(signed(sched, "0" * 64))).status_code == 404
    bad = await http.get("/media/not-a-hash")
    assert bad.status_code == 422 and "pattern" in bad.text
    assert (await http.get("/media/" + m["sha256"].upper())).status_code == 422


async def test_bad_uploads_are_refused_and_nothing_is_stored(
    server: tuple[Scheduler, httpx.AsyncClient], tmp_path: Path
) -> None:
    sched, http = server
    cases: list[tuple[bytes, int, str]] = [
        (b"xin chao, day khong phai am thanh\n" * 50, 400, "not an audio file"),
        (b"", 400, "empty"),
        (
            make_tone(tmp_path / "long.wav", 8.0).read_bytes(),
            413,
            "larger than the limit",
        ),  # 16 kHz 16 bit: 256 kB
        (make_tone(tmp_path / "too-long.mp3", 40.0, "mp3").read_bytes(), 400, "longer than the limit"),
    ]
    # a video file with no audio track
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg",
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        "color=c=red:s=32x32:d=1",
        "-f",
        "matroska",
        str(tmp_path / "silent.mkv"),
    )
    await proc.wait()
    cases.append(((tmp_path / "silent.mkv").read_bytes(), 400, "no audio stream"))
    for body, code, words in cases:
        r = await http.post("/api/media", params={"name": "x"}, content=body)
        assert r.status_code == code, (words, r.status_code, r.text)
        assert words in r.json()["detail"], r.text
    # chunked upload without Content-Length: refused while streaming, once past the limit
    big = (tmp_path / "long.wav").read_bytes()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 16384):
            yield big[i : i + 16384]

    r = await http.post("/api/media", content=chunks())
    assert r.status_code == 413 and "larger than the limit" in r.json()["detail"]
    assert stored_files(sched) == [] and media_rows(sched) == 0


async def test_text_is_read_aloud(server: tuple[Scheduler, httpx.AsyncClient]) -> None:
    sched, http = server
    r = await http.post(
        "/api/tts", json={"text": "Thông báo khẩn: nước sông đang lên, bà con di chuyển lên chỗ cao."}
    )
    assert r.status_code == 201, r.text
    m = r.json()
    assert m["content_type"] == "audio/mpeg" and m["duration_ms"] > 1000
    assert (await http.get(f"/api/media/{m['sha256']}/audio")).status_code == 200
    r = await http.post("/api/tts", json={"text": ""})
    assert r.status_code == 422
    assert media_rows(sched) == 1


async def test_shared_api_token_is_refused_with_the_way_forward(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = SchedulerConfig.model_validate(
        scheduler_config_dict(tmp_path, mosquitto.url, Keys(), http={"api_token": {"value": "s3cret"}})
    )
    with pytest.raises(SetupError, match="loaxa tokens create"):
        Scheduler.build(cfg)


def signed(sched: Scheduler, sha256: str) -> str:
    """The URL a gateway would get in its plan."""
    return str(sched.dispatcher.media_url(sha256, "xa-test", now_ms() + 60_000))


async def _ok(http: httpx.AsyncClient, path: str) -> bool:
    try:
        return (await http.get(path)).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", (0, 9)),
        ("bytes=5-", (5, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=-1000", (0, 99)),
        ("bytes=90-500", (90, 99)),
        ("bytes=100-", "unsatisfiable"),
        ("bytes=-0", "unsatisfiable"),
        ("bytes=9-3", None),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
        ("bytes=-", None),
    ],
)
def test_parse_range(header: str, expected: Any) -> None:
    assert parse_range(header, 100) == expected
