"""Vietnamese text normalisation for TTS: a phrase table, the reading rules, the script (pauses,
pace, repeat), and espeak-ng's own phonemes (the real binary) to show letters are no longer spelled."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from loaxa.cli import main
from scheduler.media.errors import MediaError
from scheduler.media.normalize_vi import leftovers, normalize, normalize_with_changes, read_decimal, read_number
from scheduler.media.tts import NORMAL, REPEAT_LEAD, SLOW, build_script

YEAR_2026 = "hai nghìn không trăm hai mươi sáu"

PHRASES: list[tuple[str, str]] = [
    # the three examples of issue 16
    ("lúc 17h30", "lúc mười bảy giờ ba mươi phút"),
    ("132,5 cm", "một trăm ba mươi hai phẩy năm xăng-ti-mét"),
    ("ngày 02/12/2026", f"ngày hai tháng mười hai năm {YEAR_2026}"),
    # times
    ("17:30", "mười bảy giờ ba mươi phút"),
    ("7h05 sáng", "bảy giờ năm phút sáng"),
    ("17h", "mười bảy giờ"),
    ("17h00", "mười bảy giờ"),
    ("7g30", "bảy giờ ba mươi phút"),
    ("5 giờ chiều", "năm giờ chiều"),
    ("8:05:30", "tám giờ năm phút ba mươi giây"),
    ("từ 7h-9h sáng", "từ bảy giờ đến chín giờ sáng"),
    ("7-9 giờ", "bảy đến chín giờ"),
    # dates
    ("2/12/2026", f"ngày hai tháng mười hai năm {YEAR_2026}"),
    ("hạn chót 15-4-2026", f"hạn chót ngày mười lăm tháng tư năm {YEAR_2026}"),
    ("ngày 2/12", "ngày hai tháng mười hai"),
    ("đến 5/12", "đến ngày năm tháng mười hai"),
    ("tháng 4/2026", f"tháng tư năm {YEAR_2026}"),
    ("tháng 4", "tháng tư"),
    ("năm 2026", f"năm {YEAR_2026}"),
    ("1/2 số hộ", "một phần hai số hộ"),
    ("3/4 diện tích", "ba phần tư diện tích"),
    # numbers
    ("1.250.000 đồng", "một triệu hai trăm năm mươi nghìn đồng"),
    ("50.000đ", "năm mươi nghìn đồng"),
    ("21 hộ", "hai mươi mốt hộ"),
    ("11 hộ", "mười một hộ"),
    ("105 người", "một trăm linh năm người"),
    ("1004", "một nghìn không trăm linh bốn"),
    ("14 và 24", "mười bốn và hai mươi tư"),
    ("15 và 25", "mười lăm và hai mươi lăm"),
    ("10 và 20", "mười và hai mươi"),
    ("2.000.000.000", "hai tỷ"),
    ("1.000.005", "một triệu không trăm linh năm"),
    ("0,05", "không phẩy không năm"),
    ("2.5 km", "hai phẩy năm ki-lô-mét"),
    # ordinals, percentages
    ("lần thứ 2", "lần thứ hai"),
    ("thứ 1", "thứ nhất"),
    ("thứ 4", "thứ tư"),
    ("tăng 15%", "tăng mười lăm phần trăm"),
    ("2,5%", "hai phẩy năm phần trăm"),
    # units
    ("25°C", "hai mươi lăm độ"),
    ("nhiệt độ -5°C", "nhiệt độ âm năm độ"),
    ("lưu lượng 1.200 m³/s", "lưu lượng một nghìn hai trăm mét khối trên giây"),
    ("gió 60 km/h", "gió sáu mươi ki-lô-mét trên giờ"),
    ("mưa 100-200 mm", "mưa một trăm đến hai trăm mi-li-mét"),
    ("cách 3 km", "cách ba ki-lô-mét"),
    ("sâu 2 m", "sâu hai mét"),
    ("20 kg gạo", "hai mươi ki-lô-gam gạo"),
    ("10 ha lúa", "mười héc-ta lúa"),
    # abbreviations
    ("UBND xã An Bình", "ủy ban nhân dân xã An Bình"),
    ("HĐND, MTTQ và HTX", "hội đồng nhân dân, mặt trận tổ quốc và hợp tác xã"),
    (
        "TP. Huế, Q.1, P. Tân Định, X. An Bình, TT. Phong Điền",
        "thành phố Huế, quận một, phường Tân Định, xã An Bình, thị trấn Phong Điền",
    ),
    ("BCH PCTT và TKCN", "ban chỉ huy phòng chống thiên tai và tìm kiếm cứu nạn"),
    # phone numbers, digit by digit
    ("gọi 0912345678", "gọi không chín một hai, ba bốn năm, sáu bảy tám"),
    ("SĐT: 0912 345 678", "số điện thoại: không chín một hai, ba bốn năm, sáu bảy tám"),
    ("+84 912 345 678", "cộng tám bốn, chín một hai, ba bốn năm, sáu bảy tám"),
    ("cháy gọi 114, cấp cứu gọi 115", "cháy gọi một một bốn, cấp cứu gọi một một năm"),
    ("ĐT: 0234 3822 113", "điện thoại: không hai ba bốn, ba tám hai hai, một một ba"),
    # roads
    ("QL1A và ĐT.741", "quốc lộ một A và đường tỉnh bảy trăm bốn mươi mốt"),
    # mixed sentences
    (
        "Lúc 17h30 ngày 02/12/2026, mực nước sông Hồng đạt 132,5 cm.",
        f"Lúc mười bảy giờ ba mươi phút ngày hai tháng mười hai năm {YEAR_2026}, "
        "mực nước sông Hồng đạt một trăm ba mươi hai phẩy năm xăng-ti-mét.",
    ),
    (
        "UBND xã hỗ trợ 500.000 đồng/hộ cho 35 hộ, liên hệ 0234 3822 113.",
        "ủy ban nhân dân xã hỗ trợ năm trăm nghìn đồng/hộ cho ba mươi lăm hộ, "
        "liên hệ không hai ba bốn, ba tám hai hai, một một ba.",
    ),
    ("Bà con di chuyển lên chỗ cao.", "Bà con di chuyển lên chỗ cao."),
]


@pytest.mark.parametrize(("typed", "spoken"), PHRASES, ids=[p[0] for p in PHRASES])
def test_phrase_table(typed: str, spoken: str) -> None:
    assert normalize(typed) == spoken
    # idempotent: staff may send the corrected preview back, and it must not change again
    assert normalize(spoken) == spoken
    assert leftovers(spoken) == []


def test_leftovers_are_pointed_out() -> None:
    spoken = normalize("Theo Thông tư 39/2020/TT-BTTTT, mã A12, giá 5$")
    assert leftovers(spoken) == ["TT", "BTTTT", "A12", "$"]
    assert build_script("Kế hoạch của BCĐ xã.").warnings == ["BCĐ"]


def test_table_is_big_enough() -> None:
    assert len(PHRASES) >= 40


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "không"),
        (5, "năm"),
        (10, "mười"),
        (15, "mười lăm"),
        (31, "ba mươi mốt"),
        (44, "bốn mươi tư"),
        (55, "năm mươi lăm"),
        (100, "một trăm"),
        (101, "một trăm linh một"),
        (110, "một trăm mười"),
        (1_000, "một nghìn"),
        (10_500, "mười nghìn năm trăm"),
        (1_000_000, "một triệu"),
        (2_026_000, "hai triệu không trăm hai mươi sáu nghìn"),
        (-3, "âm ba"),
    ],
)
def test_read_number(n: int, words: str) -> None:
    assert read_number(n) == words


def test_read_decimal_separators() -> None:
    assert read_decimal("1.250.000") == "một triệu hai trăm năm mươi nghìn"
    assert read_decimal("132,5") == "một trăm ba mươi hai phẩy năm"
    assert read_decimal("3,25") == "ba phẩy hai mươi lăm"
    assert read_decimal("3,125") == "ba phẩy một hai năm"


def test_changes_are_listed_for_the_preview() -> None:
    _text, changes = normalize_with_changes("UBND: lúc 17h30, 132,5 cm")
    assert [(c.original, c.spoken) for c in changes] == [
        ("UBND", "ủy ban nhân dân"),
        ("17h30", "mười bảy giờ ba mươi phút"),
        ("132,5 cm", "một trăm ba mươi hai phẩy năm xăng-ti-mét"),
    ]


def test_script_pauses_pace_and_repeat() -> None:
    script = build_script("Nước lên 2 m. Bà con sơ tán!\n\nĐoàn thanh niên hỗ trợ.", repeat_key=True, slow=True)
    assert script.paragraphs == [
        ["Nước lên hai mét.", "Bà con sơ tán!"],
        ["Đoàn thanh niên hỗ trợ."],
        [f"{REPEAT_LEAD} Nước lên hai mét."],
    ]
    assert script.pace == SLOW and SLOW.rate_wpm < NORMAL.rate_wpm
    ssml = script.ssml()
    assert ssml.count(f'<break time="{SLOW.sentence_ms}ms"/>') == 1
    assert ssml.count(f'<break time="{SLOW.paragraph_ms}ms"/>') == 2
    # text is XML-escaped inside the SSML
    assert "&amp;" in build_script("A & B <c>", normalize=False).ssml()
    assert "<c>" not in build_script("A & B <c>", normalize=False).ssml()


def test_script_limits_name_the_field() -> None:
    for bad in ("", "   ", "x" * 20_001):
        with pytest.raises(MediaError) as err:
            build_script(bad)
        assert err.value.field == "text"


# ------------------------------------------------------------ espeak-ng's phonemes

NOTICE = (
    "Thông báo của UBND xã: lúc 17h30 ngày 02/12/2026 mực nước sông là 132,5 cm, "
    "gió 60 km/h, lưu lượng 1.200 m³/s, 25°C."
)
#: Letters espeak-ng spells in the raw notice: units (c, m, k, s) and the "h" of 17h30.
LETTERS = "cmksh"


def _espeak(text: str) -> str:
    res = subprocess.run(
        ["espeak-ng", "-v", "vi", "-q", "-x", "--stdin"], input=text.encode(), capture_output=True, check=True
    )
    return res.stdout.decode()


def _espeak_words(text: str) -> list[str]:
    """espeak-ng's phoneme words for ``text`` (``-x``), stress marks dropped, tone digits kept."""
    words = re.split(r"[\s_|]+", _espeak(text).replace("'", "").replace(",", ""))
    return [w for w in words if w]


def _spelled(words: list[str], signatures: dict[str, str]) -> list[str]:
    """Words that are a letter name, or two or more letter names run together ("xê em" for cm).

    espeak-ng's Vietnamese letter names: m "em-mờ", s "ét", h "hát" (its t without the dental mark of
    the word "hát") … A single name is only counted for letters whose name is no Vietnamese syllable
    (c "xê" and k "ca" are also words); run-together names are never one syllable.
    """
    alone = {signatures[ch] for ch in "msh"}
    names = "|".join(re.escape(s) for s in sorted(set(signatures.values()), key=len, reverse=True))
    run_together = re.compile(rf"(?:{names}){{2,}}")
    # tones shift in compounds ("xê" is s e7 alone, s e1 before "em"): compare without tone digits
    strip = str.maketrans("", "", "0123456789")
    alone_plain = {s.translate(strip) for s in alone}
    names_plain = "|".join(re.escape(s.translate(strip)) for s in signatures.values())
    run_plain = re.compile(rf"(?:{names_plain}){{2,}}")
    return [
        w
        for w in words
        if w in alone
        or w.translate(strip) in alone_plain
        or run_together.fullmatch(w)
        or run_plain.fullmatch(w.translate(strip))
    ]


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_espeak_no_longer_spells_units_or_h() -> None:
    signatures = {ch: "".join(_espeak_words(ch)) for ch in LETTERS}
    assert signatures["h"] and signatures["m"]
    raw = _spelled(_espeak_words(NOTICE), signatures)
    # the check can fail: as typed, espeak-ng spells the h of 17h30 and the letters of cm, km, m³, °C
    assert signatures["h"] in raw, raw
    assert any("m@" in w and len(w) > len(signatures["m"]) for w in raw), raw  # "xê em", "ca em"
    assert len(raw) >= 4, raw
    spoken = normalize(NOTICE)
    assert not re.search(r"[0-9%°³/]", spoken), spoken
    assert _spelled(_espeak_words(spoken), signatures) == []
    # "UBND" as typed makes espeak-ng switch to its English voice and spell it; written out, it does not
    assert "(en)" in _espeak(NOTICE) and "(en)" not in _espeak(spoken)


# ------------------------------------------------------------ loaxa tts preview


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_cli_preview(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wav = tmp_path / "nghe-thu.wav"
    rc = main(["tts", "preview", "--json", "--slow", "--repeat-key", "--wav", str(wav), "Lúc 17h30, nước lên 2 m."])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["text"] == (
        "Lúc mười bảy giờ ba mươi phút, nước lên hai mét.\n\n"
        "Xin nhắc lại: Lúc mười bảy giờ ba mươi phút, nước lên hai mét."
    )
    assert out["rate_wpm"] == SLOW.rate_wpm
    assert wav.stat().st_size > 10_000 and abs(out["wav"]["loudness_lufs"] + 16) <= 1
    assert main(["tts", "preview", "   "]) == 2
    assert "text: the text to read is empty" in capsys.readouterr().err
