"""The catalogues are complete, the locale is chosen in the documented order, and the filters write
dates and numbers the Vietnamese way."""

from __future__ import annotations

from pathlib import Path

from scheduler.web import catalogue
from scheduler.web.filters import format_bytes, format_datetime_ms, format_duration_ms, format_number
from scheduler.web.i18n import choose_locale, parse_accept_language, translations
from scheduler.web.nav import NAV, visible_nav


def test_every_template_string_is_translated_into_vietnamese() -> None:
    assert catalogue.problems() == []


def test_no_text_is_written_into_a_template_outside_gettext() -> None:
    assert catalogue.untranslated_template_text() == []


def test_a_string_missing_from_the_catalogue_is_reported() -> None:
    template = catalogue.extract()
    template.add("A brand-new button", locations=[("scheduler/web/templates/x.html", 3)])
    found = catalogue.problems(template)
    assert any("A brand-new button" in p and "x.html:3" in p for p in found), found


def test_raw_text_in_a_template_is_reported(tmp_path: Path) -> None:
    (tmp_path / "bad.html").write_text(
        '{% extends "base.html" %}{# comment is fine #}\n<p>{{ _("Fine") }}</p>\n<p>Phát ngay</p>\n'
        '<img src="/x.png" alt="Loa phát thanh">\n<input aria-label="{{ _(\'Fine\') }}">\n'
    )
    found = catalogue.untranslated_template_text(tmp_path)
    assert any("Phát ngay" in p and "bad.html:3" in p for p in found), found
    assert any("alt=" in p and "bad.html:4" in p for p in found), found
    assert len(found) == 2, found


def test_vietnamese_catalogue_translates_the_menu() -> None:
    vi = translations("vi")
    assert [vi.gettext(item.label) for item in NAV] == [
        "Phát ngay", "Lịch phát", "Thư viện âm thanh", "Chờ duyệt", "Nhật ký phát", "Thiết bị", "Cảnh báo", "Quản trị",
    ]


def test_locale_order_query_cookie_header_default() -> None:
    assert choose_locale("en", "vi", "vi").locale == "en"
    assert choose_locale(None, "en", "vi-VN").locale == "en"
    assert choose_locale("xx", None, "fr;q=0.9, en-US;q=0.8, vi;q=0.1").locale == "en"
    assert choose_locale(None, None, "fr, de").locale == "vi"
    assert choose_locale(None, None, None).source == "default"
    assert parse_accept_language("en;q=0, vi-VN") == ["vi-vn"]
    assert parse_accept_language("x" * 600) == []  # absurd headers are ignored, not parsed


def test_dates_in_ho_chi_minh_time() -> None:
    # 2025-12-02 01:30 UTC is 08:30 the same day in Vietnam (UTC+7, no daylight saving)
    assert format_datetime_ms(1_764_639_000_000) == "02/12/2025 08:30"
    assert format_datetime_ms(1_764_639_000_000, "UTC") == "02/12/2025 01:30"
    assert format_datetime_ms(None) == "—"


def test_vietnamese_numbers() -> None:
    assert format_number(1_250_000) == "1.250.000"
    assert format_number(132.5) == "132,5"
    assert format_number(132.5, "en") == "132.5"
    assert format_number(2.46, decimals=1) == "2,5"
    assert format_bytes(1_234_567) == "1,2 MB"
    assert format_duration_ms(125_400) == "2:05"
    assert format_duration_ms(3_725_000) == "1:02:05"


class _Role:
    def __init__(self, *perms: str):
        self.perms = set(perms)

    def can(self, perm: str, gateway: str | None = None) -> bool:
        return perm in self.perms


def test_menu_shows_only_what_the_role_allows() -> None:
    assert visible_nav(None) == []
    operator = _Role("broadcast:create", "schedule:read", "schedule:write", "media:read", "broadcast:read",
                     "fleet:read")
    assert [i.path for i in visible_nav(operator)] == ["/now", "/schedule", "/library", "/log", "/fleet",
                                                      "/alarms"]
    assert [i.path for i in visible_nav(_Role("fleet:read"))] == ["/fleet", "/alarms"]
