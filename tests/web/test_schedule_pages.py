"""*Lịch phát* and *Chờ duyệt* in a real browser against the whole demo (real brokers, two commune
gateways, simulated speakers, the scheduler with its planner).

The operator of xã An Bình makes a programme (texts read aloud, reordered with the Up button, one removed),
then the "06:00 and 17:00 every day except Sunday" schedule with the picker; the week and month
views show exactly the occurrences python-dateutil gives for that rule; the other commune's
operator cannot open it; the chairman of An Bình approves it on *Chờ duyệt*; the planner sends its
occurrences and the gateway acknowledges the first one (the centre records the delivery). Two CAP
warnings from a source that is not trusted wait in the same list: one is approved, one rejected.
"""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, time, timedelta
from time import monotonic
from typing import Any
from zoneinfo import ZoneInfo

from dateutil import rrule

from tests.conftest import wait_until
from tests.warnings_cap_support import flood_alert
from tests.web.support import PHONE
from tests.web.test_staff_pages import AN_BINH, Demo, assert_page_ok, demo, sign_in

__all__ = ["demo"]  # the module-scoped demo fixture, started once for this file

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
RULE = "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR,SA;BYHOUR=6,17;BYMINUTE=0;BYSECOND=0"


def expected(first_day: date, lo: datetime, hi: datetime) -> list[datetime]:
    """The rule's times in [lo, hi) by python-dateutil, from the first non-Sunday on or after ``first_day``."""
    while first_day.weekday() == 6:
        first_day += timedelta(days=1)
    start = datetime.combine(first_day, time(6, 0))
    return [t.replace(tzinfo=TZ) for t in rrule.rrulestr(RULE, dtstart=start)
            .between(lo.replace(tzinfo=None), hi.replace(tzinfo=None), inc=True) if t < hi.replace(tzinfo=None)]


def test_operator_schedules_with_the_picker_and_the_approver_approves(browser: Any, demo: Demo) -> None:
    page = sign_in(browser, demo, "canbo-an-binh")
    page.set_default_timeout(120_000)  # texts are read aloud when the programme is saved: slow on a busy CI machine
    page.get_by_role("navigation").get_by_role("link", name="Lịch phát").click()
    page.wait_for_url("**/schedule")
    assert_page_ok(page, "schedule-empty-360")

    # the programme editor: two texts, the second moved up with the button (no drag, no script needed)
    page.get_by_role("link", name="Chương trình phát").click()
    page.wait_for_url("**/schedule/programmes")
    page.get_by_label("Tiêu đề", exact=True).fill("Bản tin thời sự")
    page.get_by_role("button", name="Bỏ mục 1").click()
    page.get_by_role("button", name="Thêm văn bản cần đọc").click()
    page.get_by_label("Mục 1: văn bản cần đọc").fill("Phần hai: tin tức trong xã.")
    page.get_by_role("button", name="Thêm văn bản cần đọc").click()
    page.get_by_label("Mục 2: văn bản cần đọc").fill("Phần một: xin chào bà con.")
    page.get_by_role("button", name="Đưa mục 2 lên").click()
    assert page.get_by_label("Mục 1: văn bản cần đọc").input_value() == "Phần một: xin chào bà con."
    assert page.get_by_label("Mục 2: văn bản cần đọc").input_value() == "Phần hai: tin tức trong xã."
    assert_page_ok(page, "programme-360")
    page.get_by_role("button", name="Bỏ mục 2").click()  # one text to read aloud keeps the test short
    assert page.locator("ol.items > li").count() == 1
    started = monotonic()
    page.get_by_role("button", name="Lưu chương trình").click()
    page.wait_for_url("**saved=1")
    print(f"programme with a text read aloud saved in {monotonic() - started:.1f} s")
    page.get_by_role("link", name="Lập lịch phát").first.click()
    page.wait_for_url("**/schedule/new?*")

    # the schedule with the picker: its default choice is the one asked for; check, then save
    page.get_by_label("Tiêu đề", exact=True).fill("Thời sự sáng chiều")
    page.get_by_label("Các ngày trong tuần trừ Chủ nhật").check()
    page.get_by_label("Giờ phát trong ngày (HH:MM, cách nhau bằng dấu phẩy)").fill("06:00, 17:00")
    first_day = datetime.strptime(page.get_by_label("Ngày bắt đầu").input_value(), "%d/%m/%Y").date()
    assert page.locator(f"input[name=targets][value={AN_BINH}]").is_checked()
    page.get_by_role("button", name="Kiểm tra giờ phát và trùng lịch").click()
    assert page.get_by_text("Không trùng giờ: bạn có thể lưu.").is_visible(), page.locator("main").inner_text()
    upcoming = page.locator("ul.upcoming li").all_inner_texts()
    lo = datetime.combine(first_day, time(0), tzinfo=TZ)
    assert upcoming == [t.strftime("%d/%m/%Y %H:%M") for t in expected(first_day, lo, lo + timedelta(days=62))[:10]]
    assert_page_ok(page, "schedule-form-360")
    page.get_by_role("button", name="Lưu (chờ duyệt)").click()
    page.wait_for_url("**/schedule?*saved=1")

    # the week view: exactly dateutil's occurrences of the displayed week, shown dd/mm/yyyy HH:mm
    monday = date.fromisoformat(page.locator("li.day").first.get_attribute("data-day") or "")
    lo = datetime.combine(monday, time(0), tzinfo=TZ)
    want = expected(first_day, lo, lo + timedelta(days=7))
    occ = page.locator("li.occ")
    shown = [datetime.fromisoformat(s) for s in occ.evaluate_all("els => els.map(e => e.dataset.start)")]
    assert shown == want and want
    assert occ.locator("time").all_inner_texts() == [t.strftime("%d/%m/%Y %H:%M") for t in want]
    sid = occ.first.get_attribute("data-schedule")
    assert sid
    assert_page_ok(page, "schedule-week-360")

    # editing shows the choices that were made (the picker reads its own rule back)
    page.locator("li.occ a").first.click()
    page.wait_for_url("**/edit")
    assert page.get_by_label("Các ngày trong tuần trừ Chủ nhật").is_checked()
    assert page.get_by_label("Giờ phát trong ngày (HH:MM, cách nhau bằng dấu phẩy)").input_value() == "06:00, 17:00"
    assert page.get_by_label("Không có ngày kết thúc").is_checked()
    page.go_back(wait_until="load")

    # the month view: the count of each day is dateutil's
    page.get_by_role("link", name="Xem theo tháng").click()
    page.wait_for_url("**view=month*")
    cells = page.locator("td[data-day]")
    days = cells.evaluate_all("els => els.map(e => [e.dataset.day, Number(e.dataset.count)])")
    lo = datetime.combine(date.fromisoformat(days[0][0]), time(0), tzinfo=TZ)
    hi = datetime.combine(date.fromisoformat(days[-1][0]) + timedelta(days=1), time(0), tzinfo=TZ)
    per_day = Counter(t.date().isoformat() for t in expected(first_day, lo, hi))
    assert {d: n for d, n in days if n} == dict(per_day)
    assert_page_ok(page, "schedule-month-360")

    # the other commune's operator cannot open it
    other = sign_in(browser, demo, "canbo-phu-my")
    resp = other.goto(f"{demo.url}/schedule/{sid}/edit")
    assert resp is not None and resp.status == 404
    other.context.close()

    # a CAP warning from a source that is not trusted waits for approval in the same list
    admin = sign_in(browser, demo, "admin")
    csrf = next(c["value"] for c in admin.context.cookies() if c["name"] == "loaxa_csrf")
    alert_ids = []
    for n in (1, 2):
        cap = admin.request.post(f"{demo.url}/api/cap", data=flood_alert(f"web-{sid}-{n}", polygon=None,
                                                                          geocode=AN_BINH),
                                 headers={"X-CSRF-Token": csrf, "Content-Type": "application/xml"})
        assert cap.status == 202 and cap.json()["decision"] == "pending_approval", cap.text()
        alert_ids.append(cap.json()["id"])
    alert_id, refused_id = alert_ids

    # the chairman decides; the reason is required to reject (checked by the server too)
    chair = sign_in(browser, demo, "chutich-an-binh")
    chair.get_by_role("navigation").get_by_role("link", name="Chờ duyệt").click()
    chair.wait_for_url("**/approvals")
    card = chair.locator(f"li[data-schedule='{sid}']")
    assert card.get_by_text("Thời sự sáng chiều").is_visible()
    assert card.get_by_text("06:00, 17:00").is_visible()
    assert_page_ok(chair, "approvals-360")
    token = card.locator("input[name=csrf_token]").first.input_value()
    url = f"{demo.url}/approvals/schedules/{sid}"
    assert chair.request.post(url, form={"action": "reject", "reason": ""}).status == 403  # no CSRF token
    assert chair.request.post(url, form={"csrf_token": token, "action": "reject", "reason": " "}).status == 400
    chair.reload()
    card.get_by_role("button", name="Duyệt", exact=True).click()
    chair.wait_for_url("**/approvals?done=approved")
    assert chair.locator(f"li[data-schedule='{sid}']").count() == 0
    alert = chair.locator(f"li[data-alert='{alert_id}']")
    assert alert.get_by_role("heading", name="Cảnh báo lũ khẩn cấp trên sông Cái").is_visible()
    alert.get_by_role("button", name="Duyệt và phát").click()
    chair.wait_for_url("**/approvals?done=alert")
    assert admin.request.get(f"{demo.url}/api/cap/{alert_id}").json()["state"] == "active"
    refused = chair.locator(f"li[data-alert='{refused_id}']")
    refused.get_by_label("Lý do từ chối").fill("Tin chưa được xác minh")
    refused.get_by_role("button", name="Từ chối").click()
    chair.wait_for_url("**/approvals?done=alert-rejected")
    assert admin.request.get(f"{demo.url}/api/cap/{refused_id}").json()["decision"] == "rejected"

    # it reaches the gateway: the planner sends the first occurrence and the gateway acknowledges it
    assert want[0] > datetime.now(TZ)  # the picker starts tomorrow
    bid = f"{sid}.v1.{int(want[0].timestamp() * 1000)}.0"  # the planner's id: schedule, version, time, item

    def delivered() -> bool:
        st = admin.request.get(f"{demo.url}/api/broadcasts/{bid}")
        return st.status == 200 and any(g["gateway"] == AN_BINH and g["state"] == "delivered"
                                        for g in st.json()["gateways"])

    wait_until(delivered, timeout=120, interval=1.0, what=f"the first occurrence {bid} delivered to the gateway")
    audit = admin.request.get(f"{demo.url}/api/audit?limit=100").json()
    admin.context.close()
    done = {(a["action"], a["actor"], a["target"]) for a in audit}
    assert ("schedule.create", "canbo-an-binh", sid) in done
    assert ("schedule.approve", "chutich-an-binh", sid) in done
    assert ("cap.approve", "chutich-an-binh", str(alert_id)) in done
    assert ("cap.reject", "chutich-an-binh", str(refused_id)) in done
    chair.context.close()
    page.context.close()


def test_the_picker_works_without_javascript(browser: Any, demo: Demo) -> None:
    """Scripts off: every field of the picker is there, and "check" answers from the server."""
    ctx = browser.new_context(viewport=PHONE, locale="vi-VN", java_script_enabled=False)
    page = ctx.new_page()
    page.goto(demo.url + "/login?next=/schedule/new")
    page.get_by_label("Tên đăng nhập").fill("canbo-an-binh")
    page.get_by_label("Mật khẩu").fill(demo.password("canbo-an-binh"))
    page.get_by_role("button", name="Đăng nhập").click()
    page.wait_for_url("**/schedule/new")
    page.get_by_label("Tiêu đề", exact=True).fill("Phát thanh thứ Hai và thứ Năm")
    page.get_by_label("Vào các ngày chọn trong tuần").check()
    page.get_by_label("Thứ Hai").check()
    page.get_by_label("Thứ Năm").check()
    page.get_by_label("Giờ phát trong ngày (HH:MM, cách nhau bằng dấu phẩy)").fill("7h30")
    page.get_by_label("Một số lần").check()
    page.get_by_label("Số lần phát").fill("3")
    page.get_by_role("button", name="Kiểm tra giờ phát và trùng lịch").click()
    page.wait_for_load_state()
    shown = [datetime.strptime(t, "%d/%m/%Y %H:%M") for t in page.locator("ul.upcoming li").all_inner_texts()]
    assert len(shown) == 3, page.locator("main").inner_text()
    assert all(t.weekday() in (0, 3) and (t.hour, t.minute) == (7, 30) for t in shown)
    ctx.close()
