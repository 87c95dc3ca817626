"""Vietnamese text normalisation for text-to-speech: write numbers, dates, times, units and
abbreviations out as the words a villager expects to hear.

``espeak-ng -v vi`` reads "17h30" as "mười bảy *hát* ba mươi" and "132,5 cm" as "… *xê em*": it
spells letters it does not know as words. Everything here turns such tokens into plain Vietnamese
before the text reaches the synthesiser, and staff see the result first (``loaxa tts preview``,
``POST /api/tts/preview``) so they can correct what the rules misread.

Reading conventions (standard Northern forms, used everywhere for consistency):

* 1 after a tens digit ≥ 2 is "mốt" (21 "hai mươi mốt"), otherwise "một" (11 "mười một");
* 5 after any tens digit is "lăm" (15 "mười lăm", 25 "hai mươi lăm"), after "linh" it stays "năm";
* 4 after a tens digit ≥ 2 is "tư" (24 "hai mươi tư"), 14 stays "mười bốn"; April is "tháng tư";
* a zero tens digit inside a number is "linh" (105 "một trăm linh năm"; Southern speech says "lẻ");
* thousands are "nghìn" (Southern "ngàn"), then "triệu", "tỷ";
* "." groups thousands (1.250.000) and "," is the decimal comma (132,5 "một trăm ba mươi hai phẩy năm").

The module is table-driven: the tables below are the place to add an abbreviation or a unit.
Each rule is a regular expression with a small function that writes the words; rules run in a
fixed order (abbreviations, phone numbers, dates, times, ranges, units, ordinals, plain numbers),
and every replacement is recorded so a preview can show what changed.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

DIGITS = ("không", "một", "hai", "ba", "bốn", "năm", "sáu", "bảy", "tám", "chín")

#: Administrative and common abbreviations, case-sensitive, matched as whole words.
ABBREVIATIONS: dict[str, str] = {
    "UBND": "ủy ban nhân dân",
    "HĐND": "hội đồng nhân dân",
    "UBMTTQ": "ủy ban mặt trận tổ quốc",
    "MTTQ": "mặt trận tổ quốc",
    "HTX": "hợp tác xã",
    "BCH": "ban chỉ huy",
    "PCTT": "phòng chống thiên tai",
    "TKCN": "tìm kiếm cứu nạn",
    "PCCC": "phòng cháy chữa cháy",
    "CSGT": "cảnh sát giao thông",
    "BHYT": "bảo hiểm y tế",
    "BHXH": "bảo hiểm xã hội",
    "THCS": "trung học cơ sở",
    "THPT": "trung học phổ thông",
    "TTYT": "trung tâm y tế",
    "KTTV": "khí tượng thủy văn",
    "CHXHCN": "cộng hòa xã hội chủ nghĩa",
    "VN": "Việt Nam",
    "SĐT": "số điện thoại",
    "VNĐ": "đồng",
    "VND": "đồng",
}
#: Abbreviations written with a full stop before a name or number ("TP. Huế", "Q.1", "X. An Bình").
DOTTED_ABBREVIATIONS: dict[str, str] = {
    "TP": "thành phố",
    "Tp": "thành phố",
    "TX": "thị xã",
    "TT": "thị trấn",
    "Q": "quận",
    "P": "phường",
    "X": "xã",
    "H": "huyện",
}
#: Road classes written before the road's number ("QL1A", "ĐT.741"): read as words, then the number.
ROADS: dict[str, str] = {"QL": "quốc lộ", "ĐT": "đường tỉnh", "TL": "tỉnh lộ", "ĐH": "đường huyện"}
#: Short emergency numbers (police 113, fire 114, ambulance 115 …), read digit by digit after these words.
HOTLINE_CUES = ("gọi", "số", "đường dây nóng", "hotline", "tổng đài")
#: Units after a number. Longest spellings first is not needed: the pattern is built longest first.
UNITS: dict[str, str] = {
    "km/h": "ki-lô-mét trên giờ",
    "km/giờ": "ki-lô-mét trên giờ",
    "m³/s": "mét khối trên giây",
    "m3/s": "mét khối trên giây",
    "m/s": "mét trên giây",
    "mm/h": "mi-li-mét trên giờ",
    "km²": "ki-lô-mét vuông",
    "km2": "ki-lô-mét vuông",
    "m²": "mét vuông",
    "m2": "mét vuông",
    "m³": "mét khối",
    "m3": "mét khối",
    "cm": "xăng-ti-mét",
    "mm": "mi-li-mét",
    "km": "ki-lô-mét",
    "m": "mét",
    "kg": "ki-lô-gam",
    "g": "gam",
    "ha": "héc-ta",
    "ml": "mi-li-lít",
    "l": "lít",
    "kW": "ki-lô-oát",
    "kWh": "ki-lô-oát giờ",
    "°C": "độ",
    "ºC": "độ",
    "độ C": "độ",
    "°": "độ",
    "%": "phần trăm",
    "đ": "đồng",
    "ph": "phút",
    "p": "phút",
}
#: Words before a day/month pair that make "2/12" a date rather than a fraction.
DATE_CUES = ("ngày", "hôm", "sáng", "trưa", "chiều", "tối", "đêm", "từ", "đến", "tới", "hạn", "trước", "sau")
SCALES = ((10**9, "tỷ"), (10**6, "triệu"), (10**3, "nghìn"))
ORDINALS = {1: "nhất", 4: "tư"}

_LETTER = r"[^\W\d_]"
_NOT_WORD_AFTER = r"(?![\w])"


@dataclass(frozen=True)
class Change:
    """One rewrite: the text as typed and the words that replace it."""

    original: str
    spoken: str


def _three(n: int, leading: bool) -> list[str]:
    """0..999 in words; a group that is not the leading one always says its hundreds ("không trăm")."""
    h, rest = divmod(n, 100)
    t, u = divmod(rest, 10)
    words: list[str] = []
    if h or not leading:
        words += [DIGITS[h], "trăm"]
    if t == 0:
        if u and words:
            words.append("linh")
    elif t == 1:
        words.append("mười")
    else:
        words += [DIGITS[t], "mươi"]
    if u:
        if u == 1 and t >= 2:
            words.append("mốt")
        elif u == 4 and t >= 2:
            words.append("tư")
        elif u == 5 and t >= 1:
            words.append("lăm")
        else:
            words.append(DIGITS[u])
    return words


def _int_words(n: int, leading: bool) -> list[str]:
    for scale, name in SCALES:
        if n >= scale:
            hi, lo = divmod(n, scale)
            words = [*_int_words(hi, leading), name]
            if lo:
                words += _int_words(lo, False)
            return words
    return _three(n, leading)


def read_number(n: int) -> str:
    """An integer in words: 2026 → "hai nghìn không trăm hai mươi sáu"."""
    if n < 0:
        return "âm " + read_number(-n)
    if n == 0:
        return "không"
    return " ".join(_int_words(n, True))


def read_digits(digits: str) -> str:
    """Digit by digit: "0912" → "không chín một hai"."""
    return " ".join(DIGITS[int(d)] for d in digits if d.isdigit())


def read_decimal(text: str) -> str:
    """A number as typed in Vietnamese: "1.250.000", "132,5", "2.5" (a lone dot before 1-2 digits)."""
    text = text.strip()
    if re.fullmatch(r"\d{1,3}(?:\.\d{3})+(?:,\d+)?", text):
        whole, _, frac = text.replace(".", "").partition(",")
    elif re.fullmatch(r"\d+\.\d{1,2}", text):
        whole, _, frac = text.partition(".")
    else:
        whole, _, frac = text.partition(",")
    words = read_number(int(whole.replace(".", "") or "0"))
    if frac:
        # "phẩy năm", "phẩy hai mươi lăm"; leading zeros or long fractions: digit by digit
        words += " phẩy " + (read_digits(frac) if frac.startswith("0") or len(frac) > 2 else read_number(int(frac)))
    return words


def read_month(m: int) -> str:
    return "tư" if m == 4 else read_number(m)


# ---------------------------------------------------------------- the rules

_NUM = r"\d{1,3}(?:\.\d{3})+(?:,\d+)?|\d+\.\d{1,2}(?!\d)|\d+(?:,\d+)?"
_Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]


def _abbrev_sub(m: re.Match[str]) -> str:
    return ABBREVIATIONS[m.group(0)]


def _dotted_sub(m: re.Match[str]) -> str:
    return DOTTED_ABBREVIATIONS[m.group(1)] + " "


def _phone_sub(m: re.Match[str]) -> str:
    raw = m.group(0).strip()
    prefix = ""
    if raw.startswith("+"):
        prefix, raw = "cộng ", raw[1:]
    groups = [g for g in re.split(r"[\s.\-]+", raw) if g]
    if len(groups) == 1 and len(groups[0]) >= 9:  # 0912345678 → 0912 345 678
        d = groups[0]
        groups = [d[:-6], d[-6:-3], d[-3:]]
    return prefix + ", ".join(read_digits(g) for g in groups)


def _road(m: re.Match[str]) -> str:
    suffix = f" {m.group(3)}" if m.group(3) else ""
    return f"{ROADS[m.group(1)]} {read_number(int(m.group(2)))}{suffix}"


def _valid_date(d: int, mo: int) -> bool:
    return 1 <= d <= 31 and 1 <= mo <= 12


def _date_dmy(m: re.Match[str]) -> str:
    d, mo, y = int(m.group("d")), int(m.group("m")), int(m.group("y"))
    if not _valid_date(d, mo):
        return m.group(0)
    lead = "" if m.group("cue") else "ngày "
    return f"{m.group('cue') or ''}{lead}{read_number(d)} tháng {read_month(mo)} năm {read_number(y)}"


def _date_dm(m: re.Match[str]) -> str:
    d, mo = int(m.group("d")), int(m.group("m"))
    if not _valid_date(d, mo):
        return m.group(0)
    cue = m.group("cue")
    lead = "" if cue.strip().lower() == "ngày" else "ngày "
    return f"{cue}{lead}{read_number(d)} tháng {read_month(mo)}"


def _month_year(m: re.Match[str]) -> str:
    mo, y = int(m.group("m")), int(m.group("y"))
    if not 1 <= mo <= 12:
        return m.group(0)
    lead = "" if m.group("cue") else "tháng "
    return f"{m.group('cue') or ''}{lead}{read_month(mo)} năm {read_number(y)}"


def _fraction(m: re.Match[str]) -> str:
    a, b = int(m.group(1)), int(m.group(2))
    return f"{read_number(a)} phần {'tư' if b == 4 else read_number(b)}"


def _time(m: re.Match[str]) -> str:
    h, mi, s = int(m.group("h")), m.group("mi"), m.group("s")
    if h > 24 or (mi and int(mi) > 59) or (s and int(s) > 59):
        return m.group(0)
    words = f"{read_number(h)} giờ"
    if mi and int(mi):
        words += f" {read_number(int(mi))} phút"
    if s and int(s):
        words += f" {read_number(int(s))} giây"
    return words


def _range(m: re.Match[str]) -> str:
    return f"{m.group(1)} đến {m.group(2)}"


def _unit(m: re.Match[str]) -> str:
    unit = m.group("u")
    return f"{read_decimal(m.group('n'))} {UNITS[unit]}"


def _ordinal(m: re.Match[str]) -> str:
    n = int(m.group(2))
    return f"{m.group(1)} {ORDINALS.get(n) or read_number(n)}"


def _month_word(m: re.Match[str]) -> str:
    n = int(m.group(2))
    return f"{m.group(1)} {read_month(n)}" if 1 <= n <= 12 else f"{m.group(1)} {read_number(n)}"


def _number(m: re.Match[str]) -> str:
    return read_decimal(m.group(0))


def _alternatives(words: list[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_CUE = r"(?P<cue>(?:(?:" + "|".join(DATE_CUES) + r")\s+))"
RULES: list[_Rule] = [
    # abbreviations (whole words, case-sensitive)
    (re.compile(r"(?<!\w)(?:" + _alternatives(list(ABBREVIATIONS)) + r")(?!\w)"), _abbrev_sub),
    (re.compile(r"(?<!\w)(" + _alternatives(list(DOTTED_ABBREVIATIONS)) + r")\.\s*(?=[\dA-ZĐÀ-Ỹ])"), _dotted_sub),
    (re.compile(r"(?<!\w)(" + _alternatives(list(ROADS)) + r")\.?\s?(\d{1,4})([A-Z]?)(?!\w)"), _road),
    (re.compile(r"(?<!\w)ĐT\s*:"), lambda m: "điện thoại:"),
    (
        re.compile(r"(?<!\w)((?:" + _alternatives(list(HOTLINE_CUES)) + r")\s+)(11[1-5])(?![\w.,]?\d)", re.I),
        lambda m: m.group(1) + read_digits(m.group(2)),
    ),
    # phone numbers: +84 912 345 678, 0912.345.678, 0912345678, 0234 3822 113
    (re.compile(r"(?<![\w.,])\+84[\s.\-]?\d{2,3}(?:[\s.\-]?\d{3,4}){2}(?![\w])"), _phone_sub),
    (re.compile(r"(?<![\w.,])0\d{2,4}(?:[\s.\-]\d{3,4}){2}(?![\w.,]?\d)"), _phone_sub),
    (re.compile(r"(?<![\w.,])0\d{8,10}(?![\w])"), _phone_sub),
    # dates: 02/12/2026, 2-12-2026, 02.12.2026; 2/12 after a cue word; 12/2026
    (
        re.compile(r"(?<!\w)(?P<cue>ngày\s+)?(?P<d>\d{1,2})([/\-.])(?P<m>\d{1,2})\3(?P<y>\d{4})(?!\w)", re.I),
        _date_dmy,
    ),
    (re.compile(r"(?<!\w)" + _CUE + r"(?P<d>\d{1,2})/(?P<m>\d{1,2})(?![\w/])", re.I), _date_dm),
    (re.compile(r"(?<!\w)(?P<cue>tháng\s+)?(?P<m>\d{1,2})/(?P<y>\d{4})(?!\w)", re.I), _month_year),
    (re.compile(r"(?<![\w/])(\d{1,3})/(\d{1,3})(?![\w/])"), _fraction),
    # times: 17h30, 17h, 17g30, 17:30, 17:30:15, 7 giờ 30 (the last is done by the number rule)
    (re.compile(r"(?<![\w.,:])(?P<h>\d{1,2})\s?h(?P<mi>\d{2})?(?:'|p|ph)?(?P<s>)(?!\w)"), _time),
    (re.compile(r"(?<![\w.,:])(?P<h>\d{1,2})g(?P<mi>\d{2})(?:'|p|ph)?(?P<s>)(?!\w)"), _time),
    (re.compile(r"(?<![\w.,:])(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2}))?(?![\w:])"), _time),
    # ranges: 7-9, 20 – 25; after a time: "bảy giờ-chín giờ"
    (re.compile(r"(?<![\w.,])(" + _NUM + r")\s*[-–]\s*(?=\d)"), lambda m: f"{m.group(1)} đến "),
    (re.compile(r"(?<=giờ)\s*[-–]\s*(?=\w)"), lambda m: " đến "),
    (re.compile(r"(?<=phút)\s*[-–]\s*(?=\w)"), lambda m: " đến "),
    # negative numbers: "-5°C"
    (re.compile(r"(^|[\s(])[-–−](?=\d+(?:,\d+)?\s*(?:°|º|độ))"), lambda m: f"{m.group(1)}âm "),
    # numbers with units
    (
        re.compile(
            r"(?<![\w.,])(?P<n>" + _NUM + r")\s?(?P<u>" + _alternatives(list(UNITS)) + r")(?!" + _LETTER + r"|\d)"
        ),
        _unit,
    ),
    # ordinals and month names
    (re.compile(r"(?<!\w)(thứ|Thứ|hạng|Hạng)\s+(\d{1,2})(?!\w)"), _ordinal),
    (re.compile(r"(?<!\w)(tháng|Tháng)\s+(\d{1,2})(?![\w/])"), _month_word),
    # everything else that is a number
    (re.compile(r"(?<![\w])(?:" + _NUM + r")(?![\w])"), _number),
    # leftover symbols
    (re.compile(r"\s*&\s*"), lambda m: " và "),
    (re.compile(r"(?<=\s)\+(?=\s)"), lambda m: "cộng"),
]


def normalize_with_changes(text: str) -> tuple[str, list[Change]]:
    """The text with numbers, dates, times, units and abbreviations in words, and what was rewritten."""
    text = unicodedata.normalize("NFC", text).replace("\u00a0", " ").replace("\u202f", " ")
    changes: list[Change] = []
    for pattern, fn in RULES:

        def record(m: re.Match[str], fn: Callable[[re.Match[str]], str] = fn) -> str:
            out = fn(m)
            if out != m.group(0):
                changes.append(Change(m.group(0).strip(), out.strip()))
            return out

        text = pattern.sub(record, text)
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines()]
    out = "\n".join(lines)
    out = re.sub(r"\n{3,}", "\n\n", out).strip()
    return out, changes


_LEFTOVER_RE = re.compile(
    r"(?<!\w)(?:[A-ZĐ]{2,}|\w*\d\w*)(?!\w)"  # unknown abbreviations, words with digits
    r"|[^\w\s.,:;!?…()\"'«»“”‘’\-–—/]"  # stray symbols ($, #, @ …)
)


def leftovers(text: str) -> list[str]:
    """Tokens still in normalised text that espeak-ng would probably spell or skip: unknown
    abbreviations in capitals ("BTTTT"), words with digits, stray symbols. Shown to staff as warnings."""
    seen: dict[str, None] = {}
    for m in _LEFTOVER_RE.finditer(text):
        seen.setdefault(m.group(0), None)
    return list(seen)


def normalize(text: str) -> str:
    """The text with numbers, dates, times, units and abbreviations written out in Vietnamese words."""
    return normalize_with_changes(text)[0]
