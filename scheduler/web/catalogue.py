"""Extracting, updating, compiling and checking the web UI's catalogues (used by scripts/i18n.py and
the tests). The templates and ``scheduler/web/*.py`` are the source of the msgids (English); each
locale's ``messages.po`` holds the translations; Vietnamese must translate every one of them.
"""

from __future__ import annotations

import re
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

from scheduler.web.i18n import DEFAULT_LOCALE, LOCALES, po_path
from scheduler.web.render import TEMPLATES_DIR

ROOT = Path(__file__).resolve().parents[2]
BABEL_CFG = ROOT / "babel.cfg"
#: Locales whose catalogue must translate every msgid (English msgids stand for themselves).
COMPLETE_LOCALES = ("vi",)
#: gettext's usual keywords, plus ``tr(request, message)`` of the page handlers.
KEYWORDS = {**DEFAULT_KEYWORDS, "tr": (2,)}


def extract() -> Catalog:
    """Every msgid of the templates and the web package, with where it is used."""
    with BABEL_CFG.open() as f:
        method_map, options_map = parse_mapping_cfg(f, filename=str(BABEL_CFG))  # type: ignore[no-untyped-call]
    catalog = Catalog(project="loaxa-web", charset="utf-8")
    for filename, lineno, message, comments, context in extract_from_dir(
        ROOT, method_map, options_map, keywords=KEYWORDS, strip_comment_tags=True
    ):
        catalog.add(message, None, [(filename, lineno)], auto_comments=comments, context=context)
    return catalog


def read(locale: str) -> Catalog:
    with po_path(locale).open("rb") as f:
        return read_po(f, locale=locale)


def update() -> list[str]:
    """Merge the extracted msgids into each locale's catalogue (new ones empty, gone ones obsolete)."""
    template = extract()
    changed = []
    for locale in LOCALES:
        path = po_path(locale)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            catalog = read(locale)
        else:
            catalog = Catalog(locale=locale, project="loaxa-web", charset="utf-8")
        catalog.update(template, no_fuzzy_matching=True)
        with path.open("wb") as f:
            write_po(f, catalog, width=110, omit_header=False, sort_output=False, ignore_obsolete=True)
        changed.append(str(path.relative_to(ROOT)))
    return changed


def compile_mo() -> list[str]:
    """Write ``messages.mo`` next to each ``.po`` (the scheduler itself compiles in memory)."""
    out = []
    for locale in LOCALES:
        catalog = read(locale)
        mo = po_path(locale).with_suffix(".mo")
        with mo.open("wb") as f:
            write_mo(f, catalog)
        out.append(str(mo.relative_to(ROOT)))
    return out


def _placeholders(text: str) -> set[str]:
    return set(re.findall(r"%\([a-z_]+\)s", text))


def problems(template: Catalog | None = None) -> list[str]:
    """What is wrong with the catalogues: missing, untranslated, fuzzy or mismatched entries."""
    found: list[str] = []
    template = template if template is not None else extract()
    for locale in LOCALES:
        path = po_path(locale)
        if not path.exists():
            found.append(f"{path}: missing (run scripts/i18n.py update)")
            continue
        catalog = read(locale)
        for msg in template:
            if not msg.id:
                continue
            where = ", ".join(f"{f}:{n}" for f, n in msg.locations)
            entry = catalog.get(msg.id, msg.context)
            if entry is None:
                found.append(f"{path}: {msg.id!r} (used at {where}) is not in the catalogue; "
                             "run scripts/i18n.py update and translate it")
                continue
            if locale in COMPLETE_LOCALES or locale == DEFAULT_LOCALE:
                text = entry.string if isinstance(entry.string, str) else "".join(entry.string or ())
                if not text:
                    found.append(f"{path}: {msg.id!r} (used at {where}) has no translation")
                elif entry.fuzzy:
                    found.append(f"{path}: {msg.id!r} (used at {where}) is marked fuzzy")
                elif isinstance(msg.id, str) and _placeholders(msg.id) != _placeholders(text):
                    found.append(f"{path}: {msg.id!r}: the translation's placeholders differ")
    return found


#: Jinja comments, statements and expressions, scripts and styles: what is not page text.
_JINJA = re.compile(r"\{#.*?#\}|\{%.*?%\}|\{\{.*?\}\}", re.S)
_SKIP = re.compile(r"<(script|style)\b.*?</\1>", re.S | re.I)
_TAG = re.compile(r"<[^>]*>", re.S)
_TEXT_ATTR = re.compile(r"""\b(alt|title|placeholder|aria-label|data-confirm|data-label-[a-z-]+)\s*=\s*(["'])(.*?)\2""",
                        re.S | re.I)
_WORD = re.compile(r"[^\W\d_]{2,}")


def _blank(m: re.Match[str]) -> str:
    """Replace markup by a space, keeping its line breaks (so line numbers stay right)."""
    return " " + "\n" * m.group(0).count("\n")


def untranslated_template_text(templates: Path = TEMPLATES_DIR) -> list[str]:
    """Text written straight into a template instead of through ``_()`` (it would never be translated)."""
    found = []
    for path in sorted(templates.rglob("*.html")):
        raw = path.read_text(encoding="utf-8")
        no_jinja = _JINJA.sub(_blank, raw)
        for m in _TEXT_ATTR.finditer(no_jinja):
            if _WORD.search(m.group(3)):
                at = no_jinja[: m.start()].count("\n") + 1
                found.append(f"{path.name}:{at}: attribute {m.group(1)}={m.group(3)!r} is not translated")
        text = _TAG.sub(_blank, _SKIP.sub(_blank, no_jinja))
        for lineno, line in enumerate(text.splitlines(), 1):
            if _WORD.search(line):
                found.append(f"{path.name}:{lineno}: text {line.strip()!r} is not translated (wrap it in _())")
    return found
