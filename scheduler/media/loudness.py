"""Loudness: measure with ffmpeg's ``loudnorm`` (EBU R128 / ITU-R BS.1770) and normalise two-pass.

Target: -16 LUFS integrated, true peak at most -1.5 dBTP. Outdoor horns are driven hard and heard
over traffic and wind; -23 LUFS (the broadcast norm) would leave the amplifiers' gain set for the
quietest file, so every item is brought to one loud-but-clean level instead and the gateway's
volume then means the same for every item. -1.5 dBTP leaves room for the lossy encoder's overshoot.

How: ffmpeg's ``loudnorm`` filter, used only as a meter, measures the (mono) source; one gain brings
it to the target and a limiter running on 4x oversampled audio (so it limits true peaks, not just
samples) holds the peaks under the ceiling. Limiting peaky speech (espeak-ng's, for one) takes some
loudness away, and so does the encoder's low-pass, so the encoded result is measured and, if it
misses the target by more than 0.3 LU, everything is done again with the gain corrected.
(``loudnorm``'s own two-pass normaliser was tried first: on espeak-ng speech it falls back to its
dynamic mode and the MP3 landed 1.9 LU under the target.) The figures of the stored file are what
the library shows. Blocking (subprocesses): call from a worker thread.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scheduler.media.errors import MediaError, binary, clean_detail, run_ffmpeg

TARGET_LUFS = -16.0
TARGET_TP_DBTP = -1.5
TARGET_LRA = 11.0
#: Below this the audio is taken as silence (the R128 absolute gate is -70 LUFS).
SILENCE_LUFS = -60.0
MEASURE_TIMEOUT_S = 600
RATE = 48_000
#: The limiter's ceiling sits this far under the true-peak target: room for the MP3/Opus encoder.
LIMITER_MARGIN_DB = 1.0
#: A rendered item this close to the target is kept; otherwise the gain is corrected and it is redone.
TOLERANCE_LU = 0.3
MAX_PASSES = 4

_JSON_RE = re.compile(r"\{[^{}]*\"input_i\"[^{}]*\}", re.S)


@dataclass(frozen=True)
class Loudness:
    integrated_lufs: float
    true_peak_dbtp: float
    lra_lu: float
    threshold_lufs: float


@dataclass(frozen=True)
class Target:
    integrated_lufs: float = TARGET_LUFS
    true_peak_dbtp: float = TARGET_TP_DBTP
    lra_lu: float = TARGET_LRA


def _num(value: object) -> float:
    try:
        out = float(str(value))
    except ValueError:
        return float("-inf")
    return out


def _parse(stderr: str, path: Path) -> dict[str, str]:
    found = _JSON_RE.findall(stderr)
    if not found:
        tail = clean_detail(stderr.strip().splitlines()[-1] if stderr.strip() else "", path)
        raise MediaError("the loudness of the audio could not be measured" + (f" ({tail})" if tail else ""))
    data: dict[str, str] = json.loads(found[-1])
    return data


def measure(path: Path, target: Target = Target(), *, timeout_s: float = MEASURE_TIMEOUT_S) -> Loudness:
    """Integrated loudness, true peak and loudness range of ``path`` (ffmpeg ``loudnorm`` analysis)."""
    af = f"loudnorm=I={target.integrated_lufs}:TP={target.true_peak_dbtp}:LRA={target.lra_lu}:print_format=json"
    try:
        res = subprocess.run(
            [binary("ffmpeg"), "-nostdin", "-hide_banner", "-i", str(path), "-vn", "-af", af, "-f", "null", "-"],
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise MediaError(f"measuring the loudness took longer than {timeout_s:.0f} s") from exc
    data = _parse(res.stderr.decode("utf-8", "replace"), path)
    return Loudness(
        integrated_lufs=_num(data.get("input_i")),
        true_peak_dbtp=_num(data.get("input_tp")),
        lra_lu=_num(data.get("input_lra")),
        threshold_lufs=_num(data.get("input_thresh")),
    )


def _render(src: Path, dst: Path, gain_db: float, ceiling_dbtp: float, timeout_s: float) -> None:
    ceiling = 10 ** (ceiling_dbtp / 20)
    # 4x oversampling makes the sample-peak limiter a true-peak limiter (ITU-R BS.1770 annex 2)
    chain = (
        f"aresample={4 * RATE},volume={gain_db:.2f}dB,"
        f"alimiter=limit={ceiling:.5f}:attack=5:release=80:asc=0:level=disabled,aresample={RATE}"
    )
    run_ffmpeg(
        ["-i", str(src), "-af", chain, "-c:a", "pcm_f32le", "-f", "wav", str(dst)],
        what="normalising the loudness",
        timeout_s=timeout_s,
        paths=(src, dst),
    )


def normalise(
    src: Path,
    work: Path,
    finish: Callable[[Path], Path],
    target: Target = Target(),
    *,
    timeout_s: float = MEASURE_TIMEOUT_S,
) -> Loudness:
    """Bring ``src`` (mono WAV) to ``target``: one gain, then a true-peak limiter, into ``work`` (WAV);
    ``finish(work)`` encodes it and returns the file that will be stored, which is what is measured.

    Limiting peaky speech and a lossy encoder's low-pass both take some loudness away, so when the
    stored file misses the target by more than :data:`TOLERANCE_LU` the gain is corrected by what is
    missing and the whole is done again; when the encoder's overshoot put the stored file's true peak
    over the target, the limiter's ceiling is lowered by as much (at most :data:`MAX_PASSES` passes).
    Returns the stored file's loudness.
    """
    first = measure(src, target, timeout_s=timeout_s)
    if not first.integrated_lufs > SILENCE_LUFS:
        raise MediaError(
            f"the audio is silent or nearly so ({first.integrated_lufs:.1f} LUFS); check the recording", field="body"
        )
    gain = target.integrated_lufs - first.integrated_lufs
    ceiling = target.true_peak_dbtp - LIMITER_MARGIN_DB
    result = first
    for _ in range(MAX_PASSES):
        _render(src, work, gain, ceiling, timeout_s)
        result = measure(finish(work), target, timeout_s=timeout_s)
        missing = target.integrated_lufs - result.integrated_lufs
        over = result.true_peak_dbtp - target.true_peak_dbtp
        if abs(missing) <= TOLERANCE_LU and over <= 0:
            break
        if over > 0:
            # peaks first: lower the ceiling, and raise the gain only if the item is clearly too quiet
            ceiling -= over + 0.3
            if missing > 2 * TOLERANCE_LU:
                gain += missing
        else:
            gain += missing
    return result
