"""Which language a page is in, and the gettext catalogues behind it.

The choice, first match wins: an explicit choice (``?lang=en`` on any page, or the language links,
which also store it), the ``loaxa_lang`` cookie, the browser's ``Accept-Language``, then Vietnamese.
Commune staff read Vietnamese; English is there for technicians and visitors.

The ``.po`` files in ``translations/<locale>/LC_MESSAGES/`` are the only source of the texts: they are
compiled in memory when the scheduler starts (a few milliseconds), so there is no ``.mo`` file that could
be stale or forgotten in a package. ``scripts/i18n.py compile`` still writes ``.mo`` files for other
gettext tools. Startup fails if the default locale has no catalogue, naming the missing file.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

TRANSLATIONS_DIR = Path(__file__).resolve().parent / "translations"
DEFAULT_LOCALE = "vi"
#: Locale tag → the language's own name (shown in the language switcher as is, never translated).
LOCALES: Mapping[str, str] = {"vi": "Tiếng Việt", "en": "English"}
COOKIE = "loaxa_lang"
QUERY = "lang"
#: Accept-Language headers longer than this are ignored (nobody sends more; it bounds the parsing work).
MAX_ACCEPT_LANGUAGE = 512


class CatalogueError(RuntimeError):
    """A catalogue cannot be read (the message names the file and the line)."""


def po_path(locale: str) -> Path:
    return TRANSLATIONS_DIR / locale / "LC_MESSAGES" / "messages.po"


@cache
def translations(locale: str) -> NullTranslations:
    """The compiled catalogue of ``locale`` (read from its ``.po`` once per process)."""
    path = po_path(locale)
    if not path.is_file():
        if locale == DEFAULT_LOCALE:
            raise CatalogueError(f"{path}: the catalogue of the default locale {locale!r} is missing")
        return NullTranslations()
    try:
        with path.open("rb") as f:
            catalog = read_po(f, locale=locale, abort_invalid=True)
    except Exception as exc:  # babel raises PoFileError and ValueError with a line number in the text
        raise CatalogueError(f"{path}: {exc}") from exc
    buf = io.BytesIO()
    write_mo(buf, catalog, use_fuzzy=False)
    buf.seek(0)
    return Translations(fp=buf, domain="messages")


def check_catalogues() -> None:
    """Fail at startup, not on the first page view, when a catalogue is broken."""
    for locale in LOCALES:
        translations(locale)


def parse_accept_language(header: str | None) -> list[str]:
    """Language tags of an ``Accept-Language`` header, best first (``q=0`` dropped)."""
    if not header or len(header) > MAX_ACCEPT_LANGUAGE:
        return []
    weighted: list[tuple[float, int, str]] = []
    for i, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                continue
        if tag and q > 0:
            weighted.append((-q, i, tag.strip().lower()))
    return [tag for _q, _i, tag in sorted(weighted)]


def supported(tag: str | None) -> str | None:
    """``vi-VN`` → ``vi``; None when the language is not one we have."""
    if not tag:
        return None
    base = tag.strip().lower().replace("_", "-").split("-")[0]
    return base if base in LOCALES else None


@dataclass(frozen=True)
class LocaleChoice:
    locale: str
    source: str  # "query" | "cookie" | "header" | "default"


def choose_locale(query: str | None, cookie: str | None, accept_language: str | None) -> LocaleChoice:
    if (loc := supported(query)) is not None:
        return LocaleChoice(loc, "query")
    if (loc := supported(cookie)) is not None:
        return LocaleChoice(loc, "cookie")
    for tag in parse_accept_language(accept_language):
        if tag == "*":
            break
        if (loc := supported(tag)) is not None:
            return LocaleChoice(loc, "header")
    return LocaleChoice(DEFAULT_LOCALE, "default")
