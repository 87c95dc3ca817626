"""Run ``loaxa ARGS…`` with cProfile switched on and off by signals (for bench/fanout.py --profile).

SIGUSR1 starts profiling the main thread (the event loop), SIGUSR2 stops it and writes the
statistics to the file given as the first argument. Times are the thread's CPU time
(``time.thread_time``), not wall time: on a machine shared with other jobs a profile by the clock
would charge the waits for a core to whatever code was running (``python bench/profiled.py OUT.prof gateway run
--config …``). Start-up imports are thereby left out of the profile of one broadcast.
"""

from __future__ import annotations

import cProfile
import signal
import sys
import time
from pathlib import Path
from types import FrameType


def main() -> int:
    # bench/ holds serial.py and friends: it must not shadow real modules (pyserial) for the gateway
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    out, args = sys.argv[1], sys.argv[2:]
    prof = cProfile.Profile(time.thread_time)

    def start(_sig: int, _frame: FrameType | None) -> None:
        prof.enable()

    def stop(_sig: int, _frame: FrameType | None) -> None:
        prof.disable()
        prof.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    import runpy

    sys.argv = ["loaxa", *args]
    runpy.run_module("loaxa", run_name="__main__", alter_sys=True)  # exactly as ``python -m loaxa``
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
