"""CAP 1.2 parsing, validation and area matching (pure functions), on the OASIS example written by
others (read from the shared test data) and on Vietnamese alerts of our own."""

from __future__ import annotations

from datetime import timedelta

import pytest

from scheduler.warnings.areas import Commune, match_areas
from scheduler.warnings.cap import CapError, parse_cap
from scheduler.warnings.intake import spoken_text, tt39_priority
from tests.warnings_cap_support import AN_BINH, PHU_MY, SHARED_CAP, XML_BOMB, XXE, flood_alert

COMMUNES = [Commune(gateway=c["id"], code=c["code"], location=tuple(c["location"]),
                    boundary=tuple(tuple(p) for p in c["boundary"]) if "boundary" in c else None)
            for c in (AN_BINH, PHU_MY)]


def test_oasis_example_parses_and_matches_no_commune() -> None:
    alert = parse_cap((SHARED_CAP / "oasis-amber-alert-example.xml").read_bytes())
    assert alert.identifier == "KAR0-0306112239-SW" and alert.status == "Actual" and alert.msg_type == "Alert"
    assert [i.language for i in alert.infos] == ["en-US", "es-US"]
    info = alert.chosen_info()
    assert info is not None and info.language == "en-US"  # no Vietnamese: the first
    assert info.areas[0].geocodes == [("SAME", "006037")] and info.expires is None
    assert match_areas(info.areas, COMMUNES) == []


def test_vietnamese_info_is_chosen_and_read() -> None:
    alert = parse_cap(flood_alert("lu-001"))
    info = alert.chosen_info()
    assert info is not None and info.language == "vi-VN"
    assert tt39_priority(info) == 9
    from zoneinfo import ZoneInfo

    text = spoken_text(info, ZoneInfo("Asia/Ho_Chi_Minh"))
    assert text.startswith("Cảnh báo lũ khẩn cấp trên sông Cái.") and "di chuyển người và tài sản" in text


def test_polygon_circle_and_geocode_matching() -> None:
    poly = parse_cap(flood_alert("p")).chosen_info()
    assert poly is not None and match_areas(poly.areas, COMMUNES) == ["xa-an-binh"]
    # a 3 km circle around Phú Mỹ's location reaches it and not An Bình (about 20 km away)
    circ = parse_cap(flood_alert("c", polygon=None, circle="10.41,105.91 3")).chosen_info()
    assert circ is not None and match_areas(circ.areas, COMMUNES) == ["xa-phu-my"]
    geo = parse_cap(flood_alert("g", polygon=None, geocode="29884")).chosen_info()
    assert geo is not None and match_areas(geo.areas, COMMUNES) == ["xa-phu-my"]
    by_id = parse_cap(flood_alert("i", polygon=None, geocode="xa-an-binh")).chosen_info()
    assert by_id is not None and match_areas(by_id.areas, COMMUNES) == ["xa-an-binh"]


def test_levels_of_tt39() -> None:
    def level(sev: str, urg: str) -> int:
        info = parse_cap(flood_alert("l", severity=sev, urgency=urg)).chosen_info()
        assert info is not None
        return tt39_priority(info)

    assert level("Extreme", "Future") == 9
    assert level("Severe", "Expected") == 9
    assert level("Severe", "Future") == 6
    assert level("Moderate", "Immediate") == 6
    assert level("Minor", "Immediate") == 3


@pytest.mark.parametrize(("raw", "element"), [
    (XML_BOMB, "alert"),
    (XXE, "alert"),
    (b"<alert><identifier>x</identifier></alert>", "alert"),
    (b'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.1"/>', "alert"),
    (b"not xml at all", "alert"),
    (flood_alert("x").replace(b"<urgency>Immediate</urgency>", b"", 1), "alert/info[1]/urgency"),
    (flood_alert("x", severity="Catastrophic"), "alert/info[1]/severity"),
    (flood_alert("x", status="Real"), "alert/status"),
    (flood_alert("x").replace(b"<scope>Public</scope>", b"<scope>Everyone</scope>"), "alert/scope"),
    (flood_alert("x", msg_type="Update"), "alert/references"),
    (flood_alert("x", polygon="10,105 11,106 10,105"), "alert/info[2]/area[1]/polygon[1]"),
    (flood_alert("x").replace(b"<sent>", b"<sent>2026-12-02 10:00<!--", 1).replace(b"</sent>", b"--></sent>", 1),
     "alert/sent"),
])
def test_refusals_name_the_element(raw: bytes, element: str) -> None:
    with pytest.raises(CapError) as err:
        parse_cap(raw)
    assert err.value.element == element, str(err.value)


def test_bomb_and_external_entities_are_refused_before_expansion() -> None:
    for raw in (XML_BOMB, XXE):
        with pytest.raises(CapError, match="DTDs and entities are not accepted"):
            parse_cap(raw)


def test_expired_alert_has_its_expiry() -> None:
    info = parse_cap(flood_alert("e", expires_in=-timedelta(hours=1))).chosen_info()
    assert info is not None and info.expires is not None


def test_feed_items_atom_links_inline_alerts_and_rss() -> None:
    from scheduler.warnings.feed import FeedError, feed_items

    inline = flood_alert("inline-1").split(b"?>", 1)[1]
    atom = (b'<feed xmlns="http://www.w3.org/2005/Atom"><entry><link rel="alternate" href="/cap/2.xml"/></entry>'
            b'<entry><link href="https://x.example/page"/><link type="application/cap+xml" href="/cap/1.xml"/>'
            b'</entry><entry><content type="application/cap+xml">' + inline + b"</content></entry></feed>")
    items = feed_items(atom, "https://kttv.example/feed.atom")
    assert isinstance(items[0], bytes) and parse_cap(items[0]).identifier == "inline-1"
    assert items[1:] == ["https://kttv.example/cap/1.xml", "https://kttv.example/cap/2.xml"]  # oldest first
    rss = (b'<rss version="2.0"><channel><item><link>https://kttv.example/cap/b.xml</link></item>'
           b'<item><enclosure url="/cap/a.xml" type="application/cap+xml"/></item></channel></rss>')
    assert feed_items(rss, "https://kttv.example/rss") == ["https://kttv.example/cap/a.xml",
                                                           "https://kttv.example/cap/b.xml"]
    for bad in (XML_BOMB, b"<html/>"):
        with pytest.raises(FeedError):
            feed_items(bad, "https://kttv.example/")
