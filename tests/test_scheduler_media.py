"""Media library and HTTP media serving: real ffmpeg/ffprobe/espeak-ng, real HTTP server, real SQLite."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from loaxa.brokers import CentralBroker
from protocol.signing import now_ms
from scheduler.config import SchedulerConfig
from scheduler.http import parse_range
from scheduler.service import Scheduler, SetupError
from tests.sched_support import Keys, add_token, bearer, make_tone, scheduler_config_dict, wait_for_async

#: the gateways the tests' scheduler serves (it ignores any other gateway id)
GATEWAYS: tuple[str, ...] = ()

@pytest.fixture
def mosquitto(central_broker_factory: Callable[..., CentralBroker]) -> CentralBroker:
    """The central broker as production runs it (ACL, accounts, client ids bound to user names)."""
    return central_broker_factory(gateways=GATEWAYS)


MAX_UPLOAD = 200_000


@pytest.fixture
async def server(tmp_path: Path, mosquitto: CentralBroker) -> AsyncIterator[tuple[Scheduler, httpx.AsyncClient]]:
    cfg = SchedulerConfig.model_validate(
        scheduler_config_dict(
            tmp_path,
            mosquitto,
            Keys(),
            http={"max_upload_bytes": MAX_UPLOAD},
            media={"max_duration_s": 30},
        )
    )
    sched = Scheduler.build(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))
    headers = bearer(add_token(sched.store.store, "operator", ["xa-test"]))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cfg.http.port}", timeout=120, headers=headers) as http:

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
        assert r.json()["field"] == "body", r.text
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


async def test_shared_api_token_is_refused_with_the_way_forward(tmp_path: Path, mosquitto: CentralBroker) -> None:
    cfg = SchedulerConfig.model_validate(
        scheduler_config_dict(tmp_path, mosquitto, Keys(), http={"api_token": {"value": "s3cret"}})
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


# ------------------------------------------------------------ loudness, sizes, preview (issue 16)

#: Normalising takes up to four ffmpeg passes: generous on a loaded machine.
SLOW_S = 180


async def _lavfi(path: Path, source: str, seconds: float, gain_db: float) -> Path:
    """Audio made by the real ffmpeg from a lavfi source, at a chosen gain, as MP3 (small uploads)."""
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source, "-t", str(seconds),
        "-af", f"volume={gain_db}dB", "-ac", "1", "-ar", "44100", "-c:a", "libmp3lame", "-b:a", "64k", str(path),
    )  # fmt: skip
    assert await proc.wait() == 0
    return path


async def _pcm(data: bytes, tmp_path: Path) -> Any:
    """Decode audio bytes to 48 kHz mono float samples (numpy), for measuring with pyloudnorm."""
    import numpy as np

    src = tmp_path / "decode-in"
    src.write_bytes(data)
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(src), "-f", "f32le", "-ac", "1", "-ar", "48000", "-",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return np.frombuffer(out, dtype="<f4").astype(np.float64)


def _loudness(samples: Any) -> tuple[float, float]:
    """(integrated LUFS by pyloudnorm, true peak dBTP by 4x oversampling with scipy): not ffmpeg."""
    import numpy as np
    import pyloudnorm
    from scipy.signal import resample_poly

    integrated = float(pyloudnorm.Meter(48000).integrated_loudness(samples))
    true_peak = float(20 * np.log10(np.max(np.abs(resample_poly(samples, 4, 1)))))
    return integrated, true_peak


async def test_stored_items_are_loudness_normalised(
    server: tuple[Scheduler, httpx.AsyncClient], tmp_path: Path
) -> None:
    """A too-quiet upload, a too-loud (clipping) one and a TTS item all end within ±1 LU of the target,
    measured with pyloudnorm on the stored files (the library normalises and measures with ffmpeg)."""
    sched, http = server
    target = sched.library.target
    speechlike = "anoisesrc=c=pink:a=0.5:r=44100:seed=7,tremolo=f=3:d=0.9"
    quiet = await _lavfi(tmp_path / "quiet.mp3", "sine=f=300:r=44100", 6, -25)
    loud = await _lavfi(tmp_path / "loud.mp3", speechlike, 6, 24)
    items: list[tuple[str, dict[str, Any], float]] = []
    for src in (quiet, loud):
        before, _tp = _loudness(await _pcm(src.read_bytes(), tmp_path))
        r = await http.post("/api/media", params={"name": src.name}, content=src.read_bytes(), timeout=SLOW_S)
        assert r.status_code == 201, r.text
        items.append((src.name, r.json(), before))
    r = await http.post(
        "/api/tts",
        json={"text": "Thông báo của UBND xã: lúc 17h30 ngày 02/12/2026, mực nước sông đạt 132,5 cm. "
              "Bà con chú ý theo dõi.", "repeat_key": True},
        timeout=SLOW_S,
    )  # fmt: skip
    assert r.status_code == 201, r.text
    items.append(("tts", r.json(), float("nan")))
    assert items[0][2] < target.integrated_lufs - 15 and items[1][2] > target.integrated_lufs + 5  # far off before
    for name, m, _before in items:
        data = (await http.get(f"/api/media/{m['sha256']}/audio")).content
        integrated, true_peak = _loudness(await _pcm(data, tmp_path))
        assert abs(integrated - target.integrated_lufs) <= 1.0, (name, integrated)
        assert true_peak <= target.true_peak_dbtp + 0.5, (name, true_peak)  # limited (encoder overshoot allowed)
        assert abs(m["loudness_lufs"] - integrated) <= 0.5, (name, m["loudness_lufs"], integrated)
        assert m["kind"] == "speech" and m["bitrate_kbps"] == sched.library.speech_bitrate_kbps
        assert m["transfer_s_1mbit"] == round(m["bytes"] * 8 / 1_000_000, 2)
    listed = (await http.get("/api/media")).json()
    assert {m["sha256"] for m in listed} == {m["sha256"] for _n, m, _b in items}
    assert all(m["loudness_lufs"] is not None for m in listed)
    assert items[2][1]["original_name"].startswith("TTS: Thông báo của ủy ban nhân dân xã")
    # too short to measure
    blip = await _lavfi(tmp_path / "blip.mp3", "sine=f=300:r=44100", 0.3, 0)
    r = await http.post("/api/media", content=blip.read_bytes())
    assert r.status_code == 400 and "at least 0.5 s" in r.json()["detail"], r.text
    # near silence is refused rather than amplified into hiss
    hush = await _lavfi(tmp_path / "hush.mp3", "sine=f=300:r=44100", 6, -45)
    r = await http.post("/api/media", content=hush.read_bytes())
    assert r.status_code == 400 and "silent" in r.json()["detail"], r.text


async def test_music_keeps_a_higher_rate(server: tuple[Scheduler, httpx.AsyncClient], tmp_path: Path) -> None:
    sched, http = server
    src = await _lavfi(tmp_path / "music.mp3", "anoisesrc=c=pink:a=0.3:r=44100", 5, 0)
    speech = (await http.post("/api/media", content=src.read_bytes(), timeout=SLOW_S)).json()
    music = (await http.post("/api/media", params={"kind": "music"}, content=src.read_bytes(), timeout=SLOW_S)).json()
    assert music["kind"] == "music" and music["bitrate_kbps"] == sched.library.bitrate_kbps > speech["bitrate_kbps"]
    assert music["bytes"] > 2 * speech["bytes"]
    bad = await http.post("/api/media", params={"kind": "noise"}, content=src.read_bytes())
    assert bad.status_code == 422 and "kind" in bad.text


async def test_upload_errors_do_not_reveal_server_paths(
    server: tuple[Scheduler, httpx.AsyncClient], tmp_path: Path
) -> None:
    """Issue 9 point 6: ffprobe's message names the temporary file; the API must not pass that on."""
    sched, http = server
    root = str(sched.library.root.resolve())
    for body in (b"not audio at all\n" * 40, b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 64):
        r = await http.post("/api/media", params={"name": "x.wav"}, content=body)
        assert r.status_code == 400, r.text
        detail = r.json()["detail"]
        assert r.json()["field"] == "body"
        for leak in (root, str(tmp_path), "/media/tmp", "upload-", "/tmp/"):
            assert leak not in detail, (leak, detail)
    assert stored_files(sched) == []


async def test_tts_preview_shows_the_spoken_text(server: tuple[Scheduler, httpx.AsyncClient]) -> None:
    sched, http = server
    r = await http.post("/api/tts/preview", json={"text": "UBND xã: lúc 17h30, nước lên 132,5 cm.", "slow": True})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["text"] == (
        "ủy ban nhân dân xã: lúc mười bảy giờ ba mươi phút, nước lên một trăm ba mươi hai phẩy năm xăng-ti-mét."
    )
    assert {"original": "17h30", "spoken": "mười bảy giờ ba mươi phút"} in out["changes"]
    assert out["rate_wpm"] < 140 and out["warnings"] == []
    unknown = await http.post("/api/tts/preview", json={"text": "Ban chỉ đạo BCĐ họp lúc 8h."})
    assert unknown.json()["warnings"] == ["BCĐ"]
    too_long = await http.post("/api/tts/preview", json={"text": "a" * 20_001})
    assert too_long.status_code == 422 and too_long.json()["detail"][0]["loc"] == ["body", "text"]
    assert media_rows(sched) == 0 and stored_files(sched) == []


async def test_one_minute_notice_size(tmp_path: Path) -> None:
    """The figures in docs/audio.md: a 1-minute speech item is ~360 kB (under 3 s over 1 Mbit/s),
    music ~960 kB; both at the loudness target."""
    from scheduler.media import MediaLibrary, transfer_seconds

    lib = MediaLibrary(tmp_path / "media", max_bytes=50_000_000, max_duration_s=120)
    src = await _lavfi(tmp_path / "minute.mp3", "anoisesrc=c=pink:a=0.3:r=44100", 60, 0)
    speech = await asyncio.to_thread(lib.ingest, src, "minute.mp3", "speech")
    src = await _lavfi(tmp_path / "minute.mp3", "anoisesrc=c=pink:a=0.3:r=44100", 60, 0)
    music = await asyncio.to_thread(lib.ingest, src, "minute.mp3", "music")
    assert 59_500 <= speech.duration_ms <= 60_500
    assert 340_000 <= speech.size <= 380_000 and transfer_seconds(speech.size) < 3.1
    assert 900_000 <= music.size <= 1_000_000 and transfer_seconds(music.size) < 8.1
    assert abs((speech.loudness_lufs or 0) + 16) <= 0.5 and abs((music.loudness_lufs or 0) + 16) <= 0.5


async def test_opus_and_keep_modes(tmp_path: Path) -> None:
    """Opus is normalised like MP3; "keep" stores the upload byte for byte and only measures it."""
    from scheduler.media import MediaLibrary

    src = await _lavfi(tmp_path / "in.mp3", "anoisesrc=c=pink:a=0.2:r=44100", 5, -6)
    before, _tp = _loudness(await _pcm(src.read_bytes(), tmp_path))
    opus = MediaLibrary(tmp_path / "opus", max_bytes=10_000_000, max_duration_s=60, transcode_to="opus")
    m = await asyncio.to_thread(opus.ingest, src, "in.mp3", "speech")
    stored = (opus.root / m.path).read_bytes()
    assert m.content_type == "audio/ogg" and stored[:4] == b"OggS"
    integrated, true_peak = _loudness(await _pcm(stored, tmp_path))
    assert abs(integrated + 16) <= 1.0 and true_peak <= -1.0, (integrated, true_peak)

    src = await _lavfi(tmp_path / "in.mp3", "anoisesrc=c=pink:a=0.2:r=44100", 5, -6)
    original = src.read_bytes()
    keep = MediaLibrary(tmp_path / "keep", max_bytes=10_000_000, max_duration_s=60, transcode_to="keep")
    k = await asyncio.to_thread(keep.ingest, src, "in.mp3", "speech")
    assert (keep.root / k.path).read_bytes() == original and k.bitrate_kbps is None
    assert k.loudness_lufs is not None and abs(k.loudness_lufs - before) <= 0.5


async def test_media_jobs_are_bounded(tmp_path: Path) -> None:
    """At most ``max_jobs`` ffmpeg/espeak-ng jobs run at once; the others wait without taking a thread."""
    import threading

    from scheduler.media import MediaLibrary

    lib = MediaLibrary(tmp_path / "media", max_bytes=1024, max_duration_s=1, max_jobs=2)
    lock = threading.Lock()
    release = threading.Event()
    running = 0
    peak = 0

    def job(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(60)
        with lock:
            running -= 1
        return i

    tasks = [asyncio.create_task(lib.run_job(job, i)) for i in range(5)]  # type: ignore[arg-type]

    async def all_placed() -> bool:
        with lock:
            return running == 2 and lib.waiting == 3

    await wait_for_async(all_placed, what="2 jobs running and 3 waiting")
    release.set()
    assert sorted(await asyncio.gather(*tasks)) == [0, 1, 2, 3, 4]  # type: ignore[type-var]
    assert peak == 2 and lib.waiting == 0
