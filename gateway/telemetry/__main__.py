"""Run the telemetry pipeline alone: ``python -m gateway.telemetry --config gateway.yaml``.

Uses the gateway's YAML (``gateway``, ``local_broker``, ``influx``, ``spool``, ``devices``); ignores
the uplink. Every ``health.interval_s`` it writes its health as JSON to
``{data_dir}/telemetry-health.json``. SIGTERM/SIGINT stop it cleanly; SIGKILL loses nothing either.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

from gateway.config import load_gateway_config
from loaxa.yamlconf import ConfigError

from .service import TelemetryService


async def _health_file(svc: TelemetryService, path: Path, interval: float) -> None:
    while True:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(svc.health(), sort_keys=True))
        os.replace(tmp, path)
        await asyncio.sleep(interval)


async def amain(config_path: str, health_interval: float | None) -> int:
    cfg = load_gateway_config(config_path)
    svc = TelemetryService(cfg)
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main.cancel)
    interval = health_interval or cfg.health.interval_s
    health_path = Path(cfg.gateway.data_dir) / "telemetry-health.json"
    runner = asyncio.create_task(svc.run())
    await svc.started.wait()
    hf = asyncio.create_task(_health_file(svc, health_path, interval))
    print(f"telemetry running for gateway {cfg.gateway.id}; spool {svc.spool.path}", flush=True)
    try:
        await runner
    except asyncio.CancelledError:
        pass
    finally:
        hf.cancel()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        with contextlib.suppress(asyncio.CancelledError):
            await hf
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m gateway.telemetry",
        description="Run only the telemetry pipeline of a gateway (MQTT ingest → spool → InfluxDB).",
    )
    p.add_argument("--config", required=True, help="gateway YAML")
    p.add_argument("--health-interval", type=float, default=None, help="seconds between health-file updates")
    p.add_argument("-v", "--verbose", action="count", default=0)
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return asyncio.run(amain(args.config, args.health_interval))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
