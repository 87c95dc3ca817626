"""``loaxa tts preview TEXT``: show how a notice will be read aloud, before it is sent.

Runs here, without a scheduler: the same normalisation, pauses and pace as ``POST /api/tts``.
``--wav FILE`` also speaks it (espeak-ng) at the library's loudness, to listen to on this machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

PREVIEW_HELP = """\
Print a Vietnamese notice as the scheduler will read it aloud: numbers, dates, times, units and
abbreviations written out in words ("17h30" -> "mười bảy giờ ba mươi phút"), with a list of what was
rewritten. Correct the text where the machine misreads it, then send the corrected text.

Examples:
  loaxa tts preview 'Lúc 17h30 ngày 02/12/2026 mực nước sông đạt 132,5 cm.'
  loaxa tts preview --slow --repeat-key --wav /tmp/thong-bao.wav - < thong-bao.txt
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tts = sub.add_parser("tts", help="text-to-speech tools (preview the normalised text)")
    tsub = tts.add_subparsers(title="tts commands", metavar="COMMAND")
    p = tsub.add_parser(
        "preview",
        help="show a notice as it will be read aloud",
        description=PREVIEW_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("text", metavar="TEXT", help="the notice (or - to read it from standard input)")
    p.add_argument("--slow", action="store_true", help="emergency pace: slower, longer pauses")
    p.add_argument("--repeat-key", action="store_true", help='end with "Xin nhắc lại: " and the first sentence')
    p.add_argument("--no-normalize", action="store_true", help="read the text exactly as typed")
    p.add_argument("--wav", type=Path, metavar="FILE", help="also speak it into FILE (WAV, library loudness)")
    p.add_argument("--phonemes", action="store_true", help="print espeak-ng's phonemes (-x) of the result")
    p.add_argument("--voice", default="vi", help="espeak-ng voice (default vi)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_preview)

    def _usage(_args: argparse.Namespace) -> int:
        tts.print_help()
        return 2

    tts.set_defaults(func=_usage)


def _preview(args: argparse.Namespace) -> int:
    import subprocess

    from scheduler.media.errors import MediaError, binary
    from scheduler.media.loudness import measure, normalise
    from scheduler.media.tts import build_script, synthesize

    text = sys.stdin.read() if args.text == "-" else args.text
    try:
        script = build_script(text, normalize=not args.no_normalize, slow=args.slow, repeat_key=args.repeat_key)
        out: dict[str, object] = {
            "text": script.text,
            "changes": [{"original": c.original, "spoken": c.spoken} for c in script.changes],
            "warnings": script.warnings,
            "rate_wpm": script.pace.rate_wpm,
        }
        if args.phonemes:
            res = subprocess.run(
                [binary("espeak-ng"), "-v", args.voice, "-q", "-x", "--stdin"],
                input=script.text.encode(),
                capture_output=True,
                timeout=120,
                check=True,
            )
            out["phonemes"] = res.stdout.decode("utf-8", "replace").strip()
        if args.wav is not None:
            with tempfile.TemporaryDirectory(prefix="loaxa-tts-") as tmp:
                raw = Path(tmp) / "raw.wav"
                synthesize(script, raw, voice=args.voice)
                loud = normalise(raw, args.wav, lambda wav: wav)
            out["wav"] = {
                "file": str(args.wav),
                "loudness_lufs": round(loud.integrated_lufs, 1),
                "true_peak_dbtp": round(measure(args.wav).true_peak_dbtp, 1),
            }
    except MediaError as exc:
        print(f"loaxa tts preview: {exc.field or 'text'}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"loaxa tts preview: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    print(script.text)
    if script.changes:
        print("\nrewritten:", file=sys.stderr)
        for c in script.changes:
            print(f"  {c.original}  ->  {c.spoken}", file=sys.stderr)
    if script.warnings:
        print(
            "\nmay be spelled letter by letter or skipped (write them in words): " + ", ".join(script.warnings),
            file=sys.stderr,
        )
    if "phonemes" in out:
        print(f"\nphonemes (espeak-ng -x):\n{out['phonemes']}", file=sys.stderr)
    if "wav" in out:
        w = out["wav"]
        assert isinstance(w, dict)
        print(
            f"\nspoken into {w['file']} ({w['loudness_lufs']} LUFS, true peak {w['true_peak_dbtp']} dBTP)",
            file=sys.stderr,
        )
    return 0
