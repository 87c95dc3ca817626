"""The audio library: uploads are checked with ffprobe, loudness-normalised, encoded for the link
(speech: MP3 mono 48 kbit/s; music: a higher rate) and stored under their SHA-256 in
<data_dir>/media. Text is normalised, read aloud with ``espeak-ng -v vi`` and stored the same way.

Everything here is blocking (subprocesses, hashing, disk): call it from a worker thread
(``asyncio.to_thread``), never on the event loop. Error messages never contain a server path.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from scheduler.media.encode import FORMATS, KEEP_TYPES, Kind, decode_mono, encode, probe, timeout_for
from scheduler.media.errors import MediaError
from scheduler.media.loudness import Target, measure, normalise
from scheduler.media.tts import build_script, synthesize

if TYPE_CHECKING:  # the ORM is imported when a row is made, so `loaxa tts preview` starts fast
    from scheduler.models import Media

CHUNK = 1024 * 1024
#: EBU R128 measures loudness in 400 ms blocks: anything shorter cannot be normalised.
MIN_DURATION_MS = 500
KINDS: tuple[Kind, ...] = ("speech", "music")


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
        bitrate_kbps: int = 128,
        speech_bitrate_kbps: int = 48,
        tts_voice: str = "vi",
        target: Target | None = None,
        max_jobs: int = 2,
    ):
        self.root = root
        self.tmp = root / "tmp"
        self.max_bytes = max_bytes
        self.max_duration_s = max_duration_s
        self.transcode_to = transcode_to
        self.bitrate_kbps = bitrate_kbps
        self.speech_bitrate_kbps = speech_bitrate_kbps
        self.tts_voice = tts_voice
        self.target = target or Target()
        self.tmp.mkdir(parents=True, exist_ok=True)
        #: ffmpeg and espeak-ng runs at once; more requests wait their turn (the server has few cores)
        self.max_jobs = max_jobs
        self._jobs: asyncio.Semaphore | None = None
        self.waiting = 0  # requests queued for a job slot

    async def run_job(self, fn: Callable[..., Media], *args: Any, **kwargs: Any) -> Media:
        """Run a blocking :meth:`ingest` / :meth:`tts` in a worker thread, at most ``max_jobs`` at once."""
        if self._jobs is None:
            self._jobs = asyncio.Semaphore(self.max_jobs)
        self.waiting += 1
        try:
            await self._jobs.acquire()
        finally:
            self.waiting -= 1
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        finally:
            self._jobs.release()

    def path_of(self, media: Media) -> Path:
        return self.root / media.path

    def bitrate_for(self, kind: Kind) -> int:
        return self.speech_bitrate_kbps if kind == "speech" else self.bitrate_kbps

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
                        raise MediaError(f"the file is larger than the limit of {self.max_bytes} bytes", field="body")
                    f.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if size == 0:
            path.unlink(missing_ok=True)
            raise MediaError("the upload is empty", field="body")
        return path

    def ingest(
        self, upload: Path, original_name: str | None, kind: Kind = "speech", *, size_limit: bool = True
    ) -> Media:
        """Check, normalise, encode and file a received upload (consumed: it is moved or deleted).

        No database access; the caller stores the returned row. ``size_limit=False`` is for audio made
        here (text-to-speech WAV), which only the duration limit applies to.
        """
        if kind not in KINDS:
            raise MediaError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}", field="kind")
        work: list[Path] = [upload]
        try:
            if size_limit and upload.stat().st_size > self.max_bytes:
                raise MediaError(f"the file is larger than the limit of {self.max_bytes} bytes", field="body")
            info = probe(upload)
            if info.duration_ms > self.max_duration_s * 1000:
                raise MediaError(
                    f"the audio lasts {info.duration_ms / 1000:.0f} s, "
                    f"longer than the limit of {self.max_duration_s} s",
                    field="body",
                )
            if info.duration_ms < MIN_DURATION_MS:
                raise MediaError(
                    f"the audio lasts {info.duration_ms / 1000:.2f} s; at least {MIN_DURATION_MS / 1000:.1f} s is "
                    "needed (its loudness cannot be measured, and nobody would hear it)",
                    field="body",
                )
            bitrate: int | None
            if self.transcode_to == "keep":
                if info.format_name not in KEEP_TYPES:
                    raise MediaError(
                        f"audio format {info.format_name!r} is not one gateways play; "
                        "set media.transcode to mp3 or opus",
                        field="body",
                    )
                ext, ctype = KEEP_TYPES[info.format_name]
                final, bitrate = upload, None
                loud = measure(final, self.target, timeout_s=timeout_for(info.duration_ms))
            else:
                ext, ctype, _ = FORMATS[self.transcode_to]
                fmt = self.transcode_to
                bitrate = self.bitrate_for(kind)
                mono = self.tmp / (upload.name + ".mono.wav")
                norm = self.tmp / (upload.name + ".norm.wav")
                final = self.tmp / (upload.name + "." + ext)
                work += [mono, norm, final]
                decode_mono(upload, mono, info.duration_ms)

                def finish(wav: Path) -> Path:
                    encode(wav, final, fmt, bitrate or 0, info.duration_ms)
                    return final

                loud = normalise(mono, norm, finish, self.target, timeout_s=timeout_for(info.duration_ms))
                info = probe(final)
            from scheduler.models import Media

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
                kind=kind,
                bitrate_kbps=bitrate,
                loudness_lufs=round(loud.integrated_lufs, 1),
                true_peak_dbtp=round(loud.true_peak_dbtp, 1),
            )
        finally:
            for p in work:
                p.unlink(missing_ok=True)

    def tts(self, text: str, *, slow: bool = False, repeat_key: bool = False, normalize: bool = True) -> Media:
        """Normalise ``text``, read it aloud (espeak-ng) and file the result like a speech upload."""
        script = build_script(text, normalize=normalize, slow=slow, repeat_key=repeat_key)
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix="tts-", suffix=".wav")
        os.close(fd)
        wav = Path(name)
        try:
            synthesize(script, wav, voice=self.tts_voice)
        except BaseException:
            wav.unlink(missing_ok=True)
            raise
        first = script.paragraphs[0][0]
        label = "TTS: " + (first if len(first) <= 80 else first[:79] + "…")
        return self.ingest(wav, label, "speech", size_limit=False)
