"""The pages anyone sees, in real chromium against a real scheduler: Vietnamese by default, English on
request, usable on a 360 px phone, accessible, light, and nothing loaded from another site."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from tests.web.support import (
    PAGE_BUDGET,
    PHONE,
    SchedulerProcess,
    check_accessibility,
    horizontal_overflow,
    screenshot,
)


def _requests(page: Any) -> list[Any]:
    seen: list[Any] = []
    page.on("requestfinished", lambda r: seen.append(r))
    return seen


def test_login_page_is_vietnamese_by_default(browser: Any, scheduler: SchedulerProcess) -> None:
    ctx = browser.new_context(viewport=PHONE, locale="vi-VN")
    page = ctx.new_page()
    reqs = _requests(page)
    page.goto(scheduler.url + "/")
    assert page.get_attribute("html", "lang") == "vi"
    assert page.get_attribute("html", "dir") == "ltr"
    assert page.get_by_role("heading", name="Đăng nhập").is_visible()
    assert page.get_by_label("Tên đăng nhập").is_visible()
    assert page.get_by_label("Mật khẩu").is_visible()
    assert horizontal_overflow(page) <= 0
    assert check_accessibility(page) == []
    total = sum(r.sizes()["responseBodySize"] + r.sizes()["responseHeadersSize"] for r in reqs)
    assert total < PAGE_BUDGET, f"{total} bytes"
    hosts = {urlsplit(r.url).netloc for r in reqs}
    assert hosts == {urlsplit(scheduler.url).netloc}, hosts
    screenshot(page, "login-vi-360")
    ctx.close()


def test_english_on_request_and_remembered(browser: Any, scheduler: SchedulerProcess) -> None:
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, locale="vi-VN")
    page = ctx.new_page()
    page.goto(scheduler.url + "/login")
    page.get_by_role("link", name="English").click()
    page.wait_for_url(scheduler.url + "/login")
    assert page.get_attribute("html", "lang") == "en"
    assert page.get_by_role("heading", name="Sign in").is_visible()
    page.goto(scheduler.url + "/")  # the cookie keeps the choice
    assert page.get_attribute("html", "lang") == "en"
    assert check_accessibility(page) == []
    screenshot(page, "login-en-desktop")
    page.goto(scheduler.url + "/?lang=vi")
    assert page.get_attribute("html", "lang") == "vi"
    ctx.close()


def test_browser_language_is_followed(browser: Any, scheduler: SchedulerProcess) -> None:
    ctx = browser.new_context(locale="en-GB")
    page = ctx.new_page()
    page.goto(scheduler.url + "/")
    assert page.get_attribute("html", "lang") == "en"
    ctx.close()


def test_language_switch_never_redirects_off_site(browser: Any, scheduler: SchedulerProcess) -> None:
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(scheduler.url + "/lang/en?next=//example.org/x")
    assert page.url == scheduler.url + "/"
    ctx.close()


def test_pages_carry_a_strict_content_security_policy(browser: Any, scheduler: SchedulerProcess) -> None:
    ctx = browser.new_context(java_script_enabled=False, locale="vi-VN")
    page = ctx.new_page()
    resp = page.goto(scheduler.url + "/")
    headers = resp.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert page.get_by_role("button", name="Đăng nhập").is_visible()  # the form needs no JavaScript
    ctx.close()


def test_api_docs_load_offline(browser: Any, scheduler: SchedulerProcess) -> None:
    ctx = browser.new_context()
    page = ctx.new_page()
    reqs = _requests(page)
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.goto(scheduler.url + "/docs")
    page.locator(".swagger-ui .info .title").wait_for(timeout=30_000)
    assert "Loa Xã scheduler" in page.locator(".swagger-ui .info .title").inner_text()
    hosts = {urlsplit(r.url).netloc for r in reqs} - {""}
    assert hosts == {urlsplit(scheduler.url).netloc}, hosts
    assert failed == []
    ctx.close()
