"""Probe and encode audio with ffprobe / ffmpeg: loudness-normalised, mono, at a rate for the link.

Speech crosses a 4G link to each commune and ends on horns that reproduce roughly 300 Hz–6 kHz:
MP3 mono at 48 kbit/s (a 1-minute notice is about 360 kB, 3 s over 1 Mbit/s) loses nothing a
villager can hear. Music keeps a higher rate (``media.bitrate_kbps``, 128 kbit/s by default).
MP3 is the default because every cheap IP speaker and the gateway's ffmpeg play it; Opus is
available for fleets known to play Ogg/Opus. Blocking (subprocesses): call from a worker thread.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from scheduler.media.errors import MediaError, binary, clean_detail, run_ffmpeg

FFMPEG_TIMEOUT_S = 600
SAMPLE_RATE = 48_000

Kind = Literal["speech", "music"]
Format = Literal["mp3", "opus"]

FORMATS: dict[str, tuple[str, str, list[str]]] = {
    # name: (extension, content type, ffmpeg codec arguments without bitrate)
    "mp3": ("mp3", "audio/mpeg", ["-c:a", "libmp3lame", "-f", "mp3"]),
    "opus": ("opus", "audio/ogg", ["-c:a", "libopus", "-application", "audio", "-f", "ogg"]),
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


@dataclass(frozen=True)
class Probe:
    format_name: str
    duration_ms: int
    codec: str
    sample_rate: int | None
    channels: int | None


def probe(path: Path) -> Probe:
    """Describe an audio file with ffprobe; :class:`MediaError` when it has no audio or is not media."""
    try:
        res = subprocess.run(
            [
                binary("ffprobe"),
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
        raise MediaError("the file could not be read as audio in 60 s", field="body") from exc
    if res.returncode != 0:
        lines = res.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = clean_detail(lines[-1], path) if lines else ""
        raise MediaError("not an audio file ffmpeg can read" + (f" ({detail})" if detail else ""), field="body")
    info = json.loads(res.stdout or b"{}")
    streams = [st for st in info.get("streams", []) if st.get("codec_type") == "audio"]
    if not streams:
        raise MediaError("the file contains no audio stream", field="body")
    fmt = info.get("format", {})
    try:
        duration_s = float(fmt.get("duration", "nan"))
    except ValueError:
        duration_s = float("nan")
    if not duration_s > 0:  # also catches NaN
        raise MediaError("the audio has no measurable duration (empty or damaged file?)", field="body")
    st = streams[0]
    return Probe(
        format_name=str(fmt.get("format_name", "")),
        duration_ms=round(duration_s * 1000),
        codec=str(st.get("codec_name", "")),
        sample_rate=int(st["sample_rate"]) if str(st.get("sample_rate", "")).isdigit() else None,
        channels=int(st["channels"]) if isinstance(st.get("channels"), int) else None,
    )


def timeout_for(duration_ms: int) -> float:
    """Time allowed for one ffmpeg run over audio of this length (resampling 4x is the slow part)."""
    return FFMPEG_TIMEOUT_S + duration_ms / 1000


def decode_mono(src: Path, dst: Path, duration_ms: int) -> None:
    """``src`` as 48 kHz mono float WAV: what is measured, normalised and encoded."""
    run_ffmpeg(
        ["-i", str(src), "-vn", "-map_metadata", "-1", "-ac", "1", "-ar", str(SAMPLE_RATE),
         "-c:a", "pcm_f32le", "-f", "wav", str(dst)],
        what="decoding the audio",
        timeout_s=timeout_for(duration_ms),
        paths=(src, dst),
    )  # fmt: skip


def encode(src: Path, dst: Path, fmt: Format, bitrate_kbps: int, duration_ms: int) -> None:
    """Encode ``src`` (already normalised) to ``fmt`` at ``bitrate_kbps``, 48 kHz mono, no metadata."""
    _ext, _ctype, codec = FORMATS[fmt]
    run_ffmpeg(
        ["-i", str(src), "-vn", "-map_metadata", "-1", "-ac", "1", "-ar", str(SAMPLE_RATE),
         *codec, "-b:a", f"{bitrate_kbps}k", str(dst)],
        what="encoding the audio",
        timeout_s=timeout_for(duration_ms),
        paths=(src, dst),
    )  # fmt: skip


def transfer_seconds(size_bytes: int, link_bps: int = 1_000_000) -> float:
    """How long ``size_bytes`` take over a link of ``link_bps`` bit/s (payload only)."""
    return size_bytes * 8 / link_bps
