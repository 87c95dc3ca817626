"""Commune staff in a real browser against the whole demo: real brokers, two commune gateways, simulated
speakers and the scheduler with its demo accounts (``loaxa demo``).

An operator of xã An Bình signs in, broadcasts a Vietnamese text now to his commune, and the board shows
every speaker ``finished`` without reloading the page; the operator of xã Phú Mỹ cannot see it. Every
main page passes the accessibility checks and fits a 360 px phone; CSRF and login throttling are
exercised through the browser.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import spawn_loaxa, wait_until
from tests.web.support import PAGE_BUDGET, PHONE, check_accessibility, horizontal_overflow, page_weight, screenshot

pytestmark = pytest.mark.slow

AN_BINH, PHU_MY = "xa-an-binh", "xa-phu-my"
TEXT = "Thông báo: chiều nay 17 giờ họp dân tại nhà văn hoá thôn Đông. Đề nghị bà con đến đúng giờ."


class Demo:
    def __init__(self, endpoints: dict[str, Any]):
        self.ep = endpoints
        self.url: str = endpoints["scheduler"]["url"]

    def password(self, login: str) -> str:
        return str(self.ep["accounts"][login]["password"])

    def api(self, path: str) -> Any:
        req = urllib.request.Request(self.url + path,
                                     headers={"Authorization": f"Bearer {self.ep['tokens']['ioc']['token']}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    tmp = tmp_path_factory.mktemp("demo")
    ep_file = tmp / "endpoints.json"
    # without the example schedules: the schedule page tests make their own and count every occurrence
    proc = spawn_loaxa("demo", "--for", "900", "--endpoints-file", str(ep_file), "--data-dir", str(tmp / "d"),
                       "--http-port", "0", "--no-example-schedules", log=tmp / "demo.log")
    try:
        wait_until(lambda: proc.poll() is None and ep_file.exists() and ep_file.stat().st_size > 0, timeout=120,
                   what=f"the demo's endpoints file (log: {tmp / 'demo.log'})")
        d = Demo(json.loads(ep_file.read_text()))

        def gateways_online() -> bool:
            try:
                gws = {g["id"]: g for g in d.api("/api/gateways")}
            except OSError:  # the scheduler is still starting
                return False
            return all(g in gws and gws[g]["status"] == "online" for g in (AN_BINH, PHU_MY))

        wait_until(gateways_online, timeout=120, interval=0.5, what="both gateways online")
        yield d
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def sign_in(browser: Any, demo: Demo, login: str, *, viewport: dict[str, int] = PHONE) -> Any:
    ctx = browser.new_context(viewport=viewport, locale="vi-VN")
    page = ctx.new_page()
    page.goto(demo.url + "/")
    page.get_by_label("Tên đăng nhập").fill(login)
    page.get_by_label("Mật khẩu").fill(demo.password(login))
    page.get_by_role("button", name="Đăng nhập").click()
    page.get_by_role("button", name="Đăng xuất").wait_for()
    return page


def assert_page_ok(page: Any, name: str) -> None:
    problems = check_accessibility(page)
    assert problems == [], f"{name}: {problems}"
    assert horizontal_overflow(page) <= 0, f"{name} scrolls sideways at {page.viewport_size['width']} px"
    assert page_weight(page) < PAGE_BUDGET, f"{name} weighs {page_weight(page)} bytes"
    screenshot(page, name)


def test_operator_broadcasts_now_and_the_board_follows_every_speaker(browser: Any, demo: Demo) -> None:
    page = sign_in(browser, demo, "canbo-an-binh")
    nav = page.get_by_role("navigation")
    assert nav.get_by_role("link", name="Phát ngay").is_visible()
    assert nav.get_by_role("link", name="Quản trị").count() == 0  # an operator is no administrator
    assert_page_ok(page, "home-operator-360")

    nav.get_by_role("link", name="Phát ngay").click()
    # only his own commune is offered, and no emergency level (an operator may not order one)
    assert page.locator("input[name=gateways]").evaluate_all("els => els.map(e => e.value)") == [AN_BINH]
    assert page.locator("input[name=priority][value=emergency]").count() == 0
    assert_page_ok(page, "now-360")
    page.get_by_label("Tiêu đề (ghi vào nhật ký)").fill("Họp dân thôn Đông")
    page.get_by_label("Văn bản cần đọc (tiếng Việt)").fill(TEXT)
    page.locator(f"input[name=gateways][value={AN_BINH}]").check()
    page.get_by_role("button", name="Phát ngay").click()
    page.wait_for_url("**/broadcasts/*")
    bid = page.url.rsplit("/", 1)[1]
    page.evaluate("() => { window.__sameDocument = true; }")  # gone if the page reloads

    # the scheduler may learn the commune's speakers from their first playback report: rows appear live
    rows = page.locator("tr[data-speaker]")
    page.wait_for_function(
        "() => { const rows = [...document.querySelectorAll('tr[data-speaker]')];"
        " return rows.length === 3 && rows.every(r => r.dataset.state === 'finished'); }",
        timeout=120_000,
    )
    assert page.evaluate("() => window.__sameDocument === true"), "the board reloaded instead of updating live"
    assert rows.locator(".state").all_inner_texts() == ["đã phát xong"] * 3
    assert page.locator("[data-count=finished]").inner_text() == "3"
    assert page.locator("[data-count=started]").inner_text() == "0"  # the counts follow, too
    assert_page_ok(page, "board-finished-360")

    admin = sign_in(browser, demo, "admin")
    status = admin.request.get(f"{demo.url}/api/broadcasts/{bid}").json()
    admin.context.close()
    assert status["created_by"] == "canbo-an-binh"
    assert {s["state"] for s in status["speakers"]} == {"finished"}

    page.get_by_role("navigation").get_by_role("link", name="Nhật ký phát").click()
    assert page.get_by_role("link", name="Họp dân thôn Đông").is_visible()
    assert_page_ok(page, "log-360")
    with page.expect_download() as dl:
        page.get_by_role("link", name="Tải về dạng CSV").click()
    text = Path(dl.value.path()).read_text(encoding="utf-8-sig")
    assert "Họp dân thôn Đông" in text and bid in text

    # the operator of the other commune sees neither the broadcast nor its board
    other = sign_in(browser, demo, "canbo-phu-my")
    other.goto(demo.url + "/log")
    assert other.get_by_role("link", name="Họp dân thôn Đông").count() == 0
    resp = other.goto(f"{demo.url}/broadcasts/{bid}")
    assert resp is not None and resp.status == 404
    resp = other.request.get(f"{demo.url}/broadcasts/{bid}/events")
    assert resp.status == 404
    other.context.close()
    page.context.close()


def test_broadcast_now_works_without_javascript(browser: Any, demo: Demo) -> None:
    """The essential task with scripts off: the form posts, the board refreshes itself until done."""
    from playwright.sync_api import expect

    ctx = browser.new_context(viewport=PHONE, locale="vi-VN", java_script_enabled=False)
    page = ctx.new_page()
    page.goto(demo.url + "/login")
    page.get_by_label("Tên đăng nhập").fill("canbo-phu-my")
    page.get_by_label("Mật khẩu").fill(demo.password("canbo-phu-my"))
    page.get_by_role("button", name="Đăng nhập").click()
    page.get_by_role("navigation").get_by_role("link", name="Phát ngay").click()
    page.get_by_label("Văn bản cần đọc (tiếng Việt)").fill("Loa xã Phú Mỹ thử phát, không dùng JavaScript.")
    page.locator(f"input[name=gateways][value={PHU_MY}]").check()
    page.get_by_role("button", name="Phát ngay").click()
    page.wait_for_url("**/broadcasts/*")
    expect(page.locator("tr[data-state=finished]")).to_have_count(3, timeout=120_000)
    ctx.close()


def test_technician_sees_the_fleet_and_library_pages_pass(browser: Any, demo: Demo) -> None:
    page = sign_in(browser, demo, "kythuat")
    page.get_by_role("navigation").get_by_role("link", name="Thiết bị").click()
    for commune in ("Xã An Bình", "Xã Phú Mỹ"):
        assert page.get_by_role("heading", name=commune).count() == 1
    assert page.locator("h2 .state-online").count() == 2  # both gateways on line
    assert_page_ok(page, "fleet-360")
    page.goto(demo.url + "/fleet?lang=en")  # English on request, remembered for the next pages
    assert page.get_by_role("heading", name="Devices").is_visible()
    assert page.get_by_role("navigation").get_by_role("link", name="Audio library").is_visible()
    assert_page_ok(page, "fleet-en-360")
    page.goto(demo.url + "/library")
    assert page.get_by_role("heading", name="Audio library").is_visible()
    page.goto(demo.url + "/library?lang=vi")
    page.goto(demo.url + "/library")
    assert_page_ok(page, "library-360")
    assert page.locator("form[action='/library']").count() == 0  # a technician reads the library only
    page.context.close()


def test_emergency_needs_a_confirmation_that_names_the_communes(browser: Any, demo: Demo) -> None:
    page = sign_in(browser, demo, "chutich-an-binh")  # the chairman may order an emergency broadcast
    page.goto(demo.url + "/now")
    page.get_by_label("Văn bản cần đọc (tiếng Việt)").fill("Khẩn cấp: nước sông lên, bà con di chuyển lên vùng cao.")
    page.locator(f"input[name=gateways][value={AN_BINH}]").check()
    page.get_by_role("radio", name="Khẩn cấp").check()
    dialogs: list[str] = []

    def answer(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", answer)
    with page.expect_navigation() as nav:  # not ticked: the server refuses and says where it would play
        page.get_by_role("button", name="Phát ngay").click()
    assert nav.value.status == 400
    assert "Xã An Bình" in page.get_by_role("alert").inner_text()
    assert "Xã An Bình" in dialogs[0]  # the browser's dialog named the commune, too
    page.get_by_role("checkbox", name="Tôi xác nhận phát khẩn cấp").check()
    page.get_by_role("button", name="Phát ngay").click()
    page.wait_for_url("**/broadcasts/*")
    assert "Khẩn cấp" in page.get_by_role("main").inner_text()
    assert len(dialogs) == 2
    # and the chairman calls it off from the board
    page.get_by_role("button", name="Huỷ bản tin").click()
    page.wait_for_load_state()
    assert page.get_by_text("Bản tin này đã bị huỷ.").is_visible()
    assert len(dialogs) == 3
    assert page.get_by_role("button", name="Huỷ bản tin").count() == 0
    page.context.close()


def test_upload_shows_progress_and_lands_in_the_library(browser: Any, demo: Demo, tmp_path: Path) -> None:
    from tests.sched_support import make_tone

    tone = make_tone(tmp_path / "chuong-bao.wav", seconds=2.0)
    page = sign_in(browser, demo, "canbo-phu-my", viewport={"width": 1280, "height": 900})
    page.goto(demo.url + "/library")
    page.get_by_label("Tệp âm thanh (MP3, WAV, OGG…)").set_input_files(str(tone))
    # remember the progress bar's highest value across the navigation that follows the upload
    page.evaluate("""() => {
      const bar = document.querySelector("form[data-upload] progress");
      new MutationObserver(() => sessionStorage.setItem("maxProgress", String(bar.value)))
        .observe(bar, {attributes: true});
    }""")
    page.get_by_role("button", name="Tải lên").click()
    page.wait_for_url("**/library?added=*")
    assert page.evaluate("() => sessionStorage.getItem('maxProgress')") == "100"
    assert page.get_by_role("status").first.inner_text() == "Đã thêm tệp âm thanh vào thư viện."
    assert page.get_by_role("cell", name="chuong-bao.wav", exact=True).is_visible()
    audio = page.locator("audio").first.get_attribute("src")
    assert audio is not None
    resp = page.request.get(demo.url + audio)
    assert resp.status == 200 and resp.headers["content-type"].startswith("audio/")
    screenshot(page, "library-desktop")
    page.context.close()


def test_a_form_without_the_csrf_token_is_refused(browser: Any, demo: Demo) -> None:
    page = sign_in(browser, demo, "canbo-an-binh")

    def count() -> int:
        return len(page.request.get(f"{demo.url}/api/broadcasts").json())

    before = count()
    page.goto(demo.url + "/now")
    page.get_by_label("Văn bản cần đọc (tiếng Việt)").fill("Thử CSRF")
    page.locator(f"input[name=gateways][value={AN_BINH}]").check()
    page.locator("form[action='/now'] input[name=csrf_token]").evaluate("el => { el.value = 'forged'; }")
    with page.expect_navigation() as nav:
        page.get_by_role("button", name="Phát ngay").click()
    assert nav.value.status == 403
    assert page.get_by_role("heading", name="Không được phép").is_visible()
    assert count() == before  # nothing was created
    # an oversized form is refused before it is read, even with the right token
    page.goto(demo.url + "/now")
    token = page.locator("form[action='/now'] input[name=csrf_token]").input_value()
    resp = page.request.post(demo.url + "/now", form={"csrf_token": token, "gateways": AN_BINH,
                                                      "text": "Loa " * 100_000})
    assert resp.status == 413
    assert count() == before
    page.context.close()


def test_admin_creates_a_token_shown_once_revokes_it_and_reads_the_audit_log(browser: Any, demo: Demo) -> None:
    page = sign_in(browser, demo, "admin", viewport={"width": 1280, "height": 900})
    page.get_by_role("navigation").get_by_role("link", name="Quản trị").click()
    assert page.get_by_role("cell", name="canbo-an-binh", exact=True).is_visible()
    page.get_by_label("Tên", exact=True).fill("may-tram-khi-tuong")
    page.get_by_role("button", name="Tạo mã truy cập").click()
    token = page.get_by_label("Mã truy cập", exact=True).input_value()
    assert token.startswith("lxa_")
    resp = page.request.get(f"{demo.url}/api/gateways", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200  # the IOC role reads the fleet
    assert_page_ok(page, "admin-desktop")
    page.goto(demo.url + "/admin")
    assert token not in page.content()  # shown once, never again
    page.once("dialog", lambda d: d.accept())
    row = page.get_by_role("row").filter(has_text="may-tram-khi-tuong")
    row.get_by_role("button", name="Thu hồi").click()
    page.wait_for_load_state()
    assert page.get_by_role("row").filter(has_text="may-tram-khi-tuong").get_by_text("đã thu hồi").is_visible()
    resp = page.request.get(f"{demo.url}/api/gateways", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 401
    page.get_by_role("link", name="Nhật ký kiểm tra").click()
    assert "còn nguyên vẹn" in page.get_by_role("status").inner_text()
    assert page.get_by_role("cell", name="broadcast.created").count() >= 1
    assert_page_ok(page, "audit-desktop")
    page.context.close()


def test_login_throttling_through_the_browser(browser: Any, demo: Demo) -> None:
    """Last in this module: it locks the account (and may lock 127.0.0.1) for a while."""
    ctx = browser.new_context(viewport=PHONE, locale="vi-VN")
    page = ctx.new_page()
    page.goto(demo.url + "/login")
    statuses = []
    for _ in range(6):
        page.get_by_label("Tên đăng nhập").fill("chutich-phu-my")
        page.get_by_label("Mật khẩu").fill("sai-mat-khau")
        with page.expect_navigation() as nav:
            page.get_by_role("button", name="Đăng nhập").click()
        statuses.append(nav.value.status)
    assert statuses[:5] == [401] * 5
    assert statuses[5] == 429
    assert "thử lại sau" in page.get_by_role("alert").inner_text()
    # the right password is not even checked now
    page.get_by_label("Tên đăng nhập").fill("chutich-phu-my")
    page.get_by_label("Mật khẩu").fill(demo.password("chutich-phu-my"))
    with page.expect_navigation() as nav:
        page.get_by_role("button", name="Đăng nhập").click()
    assert nav.value.status == 429
    assert page.get_by_role("button", name="Đăng xuất").count() == 0
    screenshot(page, "login-throttled-360")
    ctx.close()
