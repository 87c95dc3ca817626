"""The media library's one error type, and helpers that keep server paths out of its messages."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

#: Anything that looks like an absolute POSIX path (ffmpeg and ffprobe quote their input file).
_ABS_PATH_RE = re.compile(r"(?:file:)?/(?:[^\s:'\"/]+/)+[^\s:'\"]*")


class MediaError(ValueError):
    """An upload or a text that cannot be accepted; the message says why and what to do.

    ``field`` names the part of the request at fault (``body``, ``text``, ``kind`` …) when known.
    Messages never contain a path on the server.
    """

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


def clean_detail(detail: str, *paths: Path) -> str:
    """A tool's error line without the server paths in it (``…/media/tmp/upload-…`` → ``the file``)."""
    for p in paths:
        for form in {str(p), str(p.resolve()) if p.is_absolute() else str(p)}:
            detail = detail.replace(form, "the file")
    detail = _ABS_PATH_RE.sub("the file", detail)
    return detail.strip()[:200]


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pkg = "ffmpeg" if name.startswith("ff") else name
        raise MediaError(f"{name} is not installed on the scheduler (apt-get install {pkg})")
    return path


def run_ffmpeg(args: Sequence[str], *, what: str, timeout_s: float, paths: Sequence[Path] = ()) -> None:
    """Run ``ffmpeg -nostdin -y ARGS``; :class:`MediaError` (without server paths) when it fails."""
    try:
        res = subprocess.run(
            [binary("ffmpeg"), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise MediaError(f"{what} took longer than {timeout_s:.0f} s") from exc
    if res.returncode != 0:
        lines = res.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = clean_detail(lines[-1], *paths) if lines else ""
        raise MediaError(f"ffmpeg failed while {what}" + (f": {detail}" if detail else ""))
