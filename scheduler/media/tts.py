"""Text-to-speech with ``espeak-ng -v vi``: normalised text, pauses between sentences and paragraphs,
a slower pace for emergencies and the key sentence repeated for warnings ("Xin nhắc lại: …").

The text goes to espeak-ng as SSML (``-m``) so that pauses are explicit ``<break>`` elements: horns
in the open echo, and a listener 200 m away needs the gaps to tell one sentence from the next.
Blocking (a subprocess): call from a worker thread.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from scheduler.media.errors import MediaError, binary
from scheduler.media.normalize_vi import Change, leftovers, normalize_with_changes

MAX_TTS_CHARS = 20_000
TTS_TIMEOUT_S = 600
REPEAT_LEAD = "Xin nhắc lại:"


@dataclass(frozen=True)
class Pace:
    """Speaking rate (words per minute) and the pauses after a sentence and a paragraph (ms)."""

    rate_wpm: int
    sentence_ms: int
    paragraph_ms: int


NORMAL = Pace(rate_wpm=145, sentence_ms=500, paragraph_ms=1000)
#: For emergencies: slower speech and longer pauses, understood through wind, rain and echo.
SLOW = Pace(rate_wpm=115, sentence_ms=800, paragraph_ms=1500)

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


@dataclass
class Script:
    """What will be spoken: paragraphs of sentences, already normalised."""

    paragraphs: list[list[str]]
    pace: Pace
    changes: list[Change] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The spoken text, paragraphs separated by a blank line (what a preview shows)."""
        return "\n\n".join(" ".join(p) for p in self.paragraphs)

    @property
    def warnings(self) -> list[str]:
        """Tokens the rules did not turn into words (unknown abbreviations, stray symbols)."""
        return leftovers(self.text)

    def ssml(self) -> str:
        """The script as SSML for ``espeak-ng -m``, pauses as ``<break>``."""
        sentence = f'<break time="{self.pace.sentence_ms}ms"/>'
        paragraph = f'<break time="{self.pace.paragraph_ms}ms"/>'
        body = paragraph.join(sentence.join(escape(s) for s in p) for p in self.paragraphs)
        return f"<speak>{body}</speak>"


def check_text(text: str) -> str:
    """The text stripped, or :class:`MediaError` naming the field ``text``."""
    text = text.strip()
    if not text:
        raise MediaError("the text to read is empty", field="text")
    if len(text) > MAX_TTS_CHARS:
        raise MediaError(f"the text is {len(text)} characters, longer than {MAX_TTS_CHARS}", field="text")
    return text


def build_script(
    text: str, *, normalize: bool = True, slow: bool = False, repeat_key: bool = False, key: str | None = None
) -> Script:
    """Split ``text`` into paragraphs (blank lines or line breaks) and sentences, normalised.

    ``repeat_key`` adds a last paragraph "Xin nhắc lại: <key>" (``key``, or the first sentence).
    """
    text = check_text(text)
    changes: list[Change] = []
    if normalize:
        text, changes = normalize_with_changes(text)
    paragraphs: list[list[str]] = []
    for block in re.split(r"\n\s*", text):
        sentences = [s.strip() for s in _SENTENCE_END.split(block) if s.strip()]
        if sentences:
            paragraphs.append(sentences)
    if repeat_key:
        if key is not None:
            key = check_text(key)
            if normalize:
                key, more = normalize_with_changes(key)
                changes += more
        else:
            key = paragraphs[0][0]
        paragraphs.append([f"{REPEAT_LEAD} {key}"])
    return Script(paragraphs=paragraphs, pace=SLOW if slow else NORMAL, changes=changes)


def synthesize(script: Script, wav: Path, *, voice: str = "vi") -> None:
    """Speak ``script`` into ``wav`` (espeak-ng, 22.05 kHz mono WAV)."""
    try:
        res = subprocess.run(
            [binary("espeak-ng"), "-v", voice, "-m", "-s", str(script.pace.rate_wpm), "-w", str(wav), "--stdin"],
            input=script.ssml().encode("utf-8"),
            capture_output=True,
            timeout=TTS_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise MediaError(f"text-to-speech took longer than {TTS_TIMEOUT_S} s", field="text") from exc
    if res.returncode != 0:
        detail = res.stderr.decode("utf-8", "replace").strip()[:200]
        raise MediaError(f"espeak-ng failed ({detail or f'exit {res.returncode}'})", field="text")
