"""Small pure functions of the web pages."""

from __future__ import annotations

from scheduler.web.render import safe_next
from scheduler.web.staff import _cell


def test_csv_cells_never_run_as_formulas() -> None:
    assert _cell("=HYPERLINK(\"http://x\")") == "'=HYPERLINK(\"http://x\")"
    assert _cell("+1") == "'+1" and _cell("@a") == "'@a" and _cell("-2") == "'-2"
    assert _cell("Họp dân") == "Họp dân"


def test_next_stays_on_this_site() -> None:
    assert safe_next("/log?gateway=xa-an-binh") == "/log?gateway=xa-an-binh"
    for bad in ("//evil.example/", "https://evil.example/", "/\\\\evil", "javascript:alert(1)", "", None, "/a\nb"):
        assert safe_next(bad) == "/"
