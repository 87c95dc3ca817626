"""The audio library: uploads are checked with ffprobe, optionally converted with ffmpeg to a format
every gateway plays (MP3 or Opus, 48 kHz mono), and stored under their SHA-256 in <data_dir>/media.

Text is read aloud in Vietnamese with ``espeak-ng -v vi`` and then stored like an upload.
Everything here is blocking (subprocesses, hashing, disk): call it from a worker thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from scheduler.models import Media

CHUNK = 1024 * 1024
FFMPEG_TIMEOUT_S = 600
MAX_TTS_CHARS = 20_000

FORMATS: dict[str, tuple[str, str, list[str]]] = {
    # name: (extension, content type, ffmpeg codec arguments without bitrate)
    "mp3": ("mp3", "audio/mpeg", ["-c:a", "libmp3lame", "-f", "mp3"]),
    "opus": ("opus", "audio/ogg", ["-c:a", "libopus", "-f", "ogg"]),
}
#: Content types for files kept as uploaded, by ffprobe's format name.
KEEP_TYPES: dict[str, tuple[str, str]] = {
    "mp3": ("mp3", "audio/mpeg"),
    "ogg": ("ogg", "audio/ogg"),
    "wav": ("wav", "audio/wav"),
    "flac": ("flac", "audio/flac"),
    "mov,mp4,m4a,3gp,3g2,mj2": ("m4a", "audio/mp4"),
    "aac": ("aac", "audio/aac"),
}


class MediaError(ValueError):
    """An upload that cannot be accepted; the message says why and what to do."""


@dataclass(frozen=True)
class Probe:
    format_name: str
    duration_ms: int
    codec: str
    sample_rate: int | None
    channels: int | None


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MediaError(
            f"{name} is not installed on the scheduler (apt-get install {'ffmpeg' if name.startswith('ff') else name})"
        )
    return path


def probe(path: Path) -> Probe:
    """Describe an audio file with ffprobe; :class:`MediaError` when it has no audio or is not media."""
    try:
        res = subprocess.run(
            [
                _binary("ffprobe"),
                "-v",
                "error",
                "-show_entries",
                "format=format_name,duration:stream=codec_type,codec_name,sample_rate,channels",
                "-of",
                "json",
                str(path),
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise MediaError("the file could not be read as audio in 60 s") from exc
    if res.returncode != 0:
        detail = res.stderr.decode("utf-8", "replace").strip().splitlines()
        raise MediaError("not an audio file ffmpeg can read" + (f" ({detail[-1][:200]})" if detail else ""))
    info = json.loads(res.stdout or b"{}")
    streams = [st for st in info.get("streams", []) if st.get("codec_type") == "audio"]
    if not streams:
        raise MediaError("the file contains no audio stream")
    fmt = info.get("format", {})
    try:
        duration_s = float(fmt.get("duration", "nan"))
    except ValueError:
        duration_s = float("nan")
    if not duration_s > 0:  # also catches NaN
        raise MediaError("the audio has no measurable duration (empty or damaged file?)")
    st = streams[0]
    return Probe(
        format_name=str(fmt.get("format_name", "")),
        duration_ms=round(duration_s * 1000),
        codec=str(st.get("codec_name", "")),
        sample_rate=int(st["sample_rate"]) if str(st.get("sample_rate", "")).isdigit() else None,
        channels=int(st["channels"]) if isinstance(st.get("channels"), int) else None,
    )


def transcode(src: Path, dst: Path, fmt: str, bitrate_kbps: int) -> None:
    """Convert to ``fmt`` (mp3 | opus), 48 kHz mono, loudness left as is."""
    _ext, _ctype, codec = FORMATS[fmt]
    try:
        res = subprocess.run(
            [
                _binary("ffmpeg"),
                "-nostdin",
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-i",
                str(src),
                "-vn",
                "-map_metadata",
                "-1",
                "-ac",
                "1",
                "-ar",
                "48000",
                *codec,
                "-b:a",
                f"{bitrate_kbps}k",
                str(dst),
            ],
            capture_output=True,
            timeout=FFMPEG_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise MediaError(f"converting the audio took longer than {FFMPEG_TIMEOUT_S} s") from exc
    if res.returncode != 0:
        detail = res.stderr.decode("utf-8", "replace").strip().splitlines()
        raise MediaError("ffmpeg could not convert the audio" + (f": {detail[-1][:200]}" if detail else ""))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class MediaLibrary:
    """Content-addressed audio files under ``root`` (normally <data_dir>/media)."""

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int,
        max_duration_s: int,
        transcode_to: Literal["keep", "mp3", "opus"] = "mp3",
        bitrate_kbps: int = 64,
        tts_voice: str = "vi",
    ):
        self.root = root
        self.tmp = root / "tmp"
        self.max_bytes = max_bytes
        self.max_duration_s = max_duration_s
        self.transcode_to = transcode_to
        self.bitrate_kbps = bitrate_kbps
        self.tts_voice = tts_voice
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path_of(self, media: Media) -> Path:
        return self.root / media.path

    def receive(self, chunks: Iterable[bytes]) -> Path:
        """Write an upload to a temporary file, refusing it as soon as it passes ``max_bytes``."""
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix="upload-")
        path = Path(name)
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise MediaError(f"the file is larger than the limit of {self.max_bytes} bytes")
                    f.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if size == 0:
            path.unlink(missing_ok=True)
            raise MediaError("the upload is empty")
        return path

    def ingest(self, upload: Path, original_name: str | None) -> Media:
        """Check, convert and file a received upload (consumed: it is moved or deleted). No DB access."""
        work: list[Path] = [upload]
        try:
            if upload.stat().st_size > self.max_bytes:
                raise MediaError(f"the file is larger than the limit of {self.max_bytes} bytes")
            info = probe(upload)
            if info.duration_ms > self.max_duration_s * 1000:
                raise MediaError(
                    f"the audio lasts {info.duration_ms / 1000:.0f} s, longer than the limit of {self.max_duration_s} s"
                )
            if self.transcode_to == "keep":
                if info.format_name not in KEEP_TYPES:
                    raise MediaError(
                        f"audio format {info.format_name!r} is not one gateways play; "
                        "set media.transcode to mp3 or opus"
                    )
                ext, ctype = KEEP_TYPES[info.format_name]
                final = upload
            else:
                ext, ctype, _ = FORMATS[self.transcode_to]
                final = self.tmp / (upload.name + "." + ext)
                work.append(final)
                transcode(upload, final, self.transcode_to, self.bitrate_kbps)
                info = probe(final)
            digest = sha256_file(final)
            rel = f"{digest[:2]}/{digest}.{ext}"
            dest = self.root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            size = final.stat().st_size
            if not dest.exists():
                os.replace(final, dest)
            return Media(
                sha256=digest,
                size=size,
                duration_ms=info.duration_ms,
                content_type=ctype,
                path=rel,
                original_name=(original_name or None) and original_name[:300],
                created_at=time.time_ns() // 1_000_000,
            )
        finally:
            for p in work:
                p.unlink(missing_ok=True)

    def tts(self, text: str) -> Media:
        """Read ``text`` aloud (espeak-ng) and file the result like an upload."""
        text = text.strip()
        if not text:
            raise MediaError("the text to read is empty")
        if len(text) > MAX_TTS_CHARS:
            raise MediaError(f"the text is longer than {MAX_TTS_CHARS} characters")
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix="tts-", suffix=".wav")
        os.close(fd)
        wav = Path(name)
        try:
            res = subprocess.run(
                [_binary("espeak-ng"), "-v", self.tts_voice, "-w", str(wav), "--stdin"],
                input=text.encode("utf-8"),
                capture_output=True,
                timeout=FFMPEG_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            wav.unlink(missing_ok=True)
            raise MediaError("text-to-speech took too long") from exc
        if res.returncode != 0:
            wav.unlink(missing_ok=True)
            raise MediaError("espeak-ng failed: " + res.stderr.decode("utf-8", "replace").strip()[:200])
        return self.ingest(wav, "tts.txt")
