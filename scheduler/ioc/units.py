"""Units from field names: the gateway's convention is to end a field name with its unit.

docs/sensors.md asks installers to "put the unit in the name" (``water_level_cm``, ``rain_mm``,
``humidity_pct``); the IOC reads it back here. A name without a known suffix has no unit (None),
which is also right for counts and 0/1 states (``tips``, ``mains_present``).
"""

from __future__ import annotations

#: Longest suffix first, so ``rain_rate_mm_h`` is mm/h and not h.
SUFFIX_UNITS: tuple[tuple[str, str], ...] = (
    ("_mm_h", "mm/h"),
    ("_ugm3", "µg/m³"),
    ("_kwh", "kWh"),
    ("_hpa", "hPa"),
    ("_pct", "%"),
    ("_ppm", "ppm"),
    ("_ppb", "ppb"),
    ("_dbm", "dBm"),
    ("_db", "dB"),
    ("_mb", "MB"),
    ("_kb", "kB"),
    ("_ms", "ms"),
    ("_cm", "cm"),
    ("_mm", "mm"),
    ("_m3", "m³"),
    ("_ms2", "m/s²"),
    ("_mps", "m/s"),
    ("_deg", "°"),
    ("_hz", "Hz"),
    ("_lux", "lx"),
    ("_va", "VA"),
    ("_kw", "kW"),
    ("_ma", "mA"),
    ("_mv", "mV"),
    ("_c", "°C"),
    ("_s", "s"),
    ("_m", "m"),
    ("_v", "V"),
    ("_a", "A"),
    ("_w", "W"),
)


def unit_of(field_name: str) -> str | None:
    """``water_level_cm`` → ``cm``; ``cpu_temp_c`` → ``°C``; ``tips`` → None."""
    name = field_name.lower()
    for suffix, unit in SUFFIX_UNITS:
        if name.endswith(suffix) and len(name) > len(suffix):
            return unit
    return None
