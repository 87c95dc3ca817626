"""The audio library of the centre: upload, probe, loudness-normalise, encode for the link, and
Vietnamese text-to-speech with text normalisation. See docs/audio.md.

Modules: :mod:`.library` (the store), :mod:`.normalize_vi` (numbers, dates, units … in words),
:mod:`.tts` (pauses, pace, espeak-ng), :mod:`.loudness` (EBU R128 measurement and normalisation),
:mod:`.encode` (ffprobe / ffmpeg), :mod:`.errors`.
"""

from scheduler.media.encode import FORMATS, KEEP_TYPES, Probe, probe, transfer_seconds
from scheduler.media.errors import MediaError
from scheduler.media.library import MediaLibrary, sha256_file
from scheduler.media.loudness import Loudness, Target
from scheduler.media.normalize_vi import normalize
from scheduler.media.tts import MAX_TTS_CHARS

__all__ = [
    "FORMATS",
    "KEEP_TYPES",
    "MAX_TTS_CHARS",
    "Loudness",
    "MediaError",
    "MediaLibrary",
    "Probe",
    "Target",
    "normalize",
    "probe",
    "sha256_file",
    "transfer_seconds",
]
