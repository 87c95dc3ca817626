"""A real gateway and its simulated speakers in ONE process, so that libfaketime (started by the
test with ``FAKETIME_TIMESTAMP_FILE``) gives both the same stepped wall clock. Run as
``python -m tests.offline_runner GATEWAY_YAML LAN_DEVICE_URL CREDENTIALS_JSON ID,ID``; stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path


async def main(conf: Path, lan_url: str, credentials: Path, ids: list[str]) -> None:
    from devices.sim.credentials import load_credentials
    from devices.sim.speakers import run_fleet
    from gateway.app import Gateway
    from gateway.config import load_gateway_config
    from loaxa.mqttconf import MqttEndpoint

    cfg = load_gateway_config(conf)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    fleet = asyncio.create_task(run_fleet(MqttEndpoint(url=lan_url), cfg.gateway.id, ids,
                                          fetch=False, credentials=load_credentials(credentials, ids)))
    try:
        await Gateway(cfg).run(stop)
    finally:
        fleet.cancel()
        await asyncio.gather(fleet, return_exceptions=True)


if __name__ == "__main__":
    # the time stamps are the (faked) wall clock the gateway lives on
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4].split(",")))
