"""Sensor benchmark: how much the sensor side costs, on this machine, in one run.

    /work/venv/bin/python bench/sensors.py [--devices 500] [--messages 20] [--polls 300]

Measures:

* simulated-sensor samples/s per kind (pure CPU: what `sim_sensor` costs the gateway);
* `loaxa sim sensors` load generation: readings/s published to a real Mosquitto (started here)
  and received by a subscriber, single-reading and 10-reading batch messages (QoS 1);
* Modbus RTU: polls/s of two slaves sharing one bus through a socat pseudo-terminal to
  pymodbus's serial server. A pty has no baud rate, so this is the software's own overhead per
  poll; on a real 9600-baud bus one 2-register poll takes ~25 ms on the wire.

Prints the figures and, last, one JSON line. Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiomqtt  # noqa: E402

from devices.sensors.sim import KINDS, make_model  # noqa: E402
from devices.sim.sensors_cli import PublishStats, make_devices, publish_sim_sensors  # noqa: E402
from loaxa.servers import Mosquitto, MosquittoUser  # noqa: E402


def bench_generators(samples: int = 20_000) -> dict[str, float]:
    out = {}
    for kind in KINDS:
        model = make_model(kind, 1)
        t0 = time.perf_counter()
        for i in range(samples):
            model.sample(1_764_000_000 + i * 10.0)
        out[kind] = round(samples / (time.perf_counter() - t0))
    return out


#: The bench's single account: it publishes for every simulated sensor and reads them back.
BENCH_USER = MosquittoUser("bench", secrets.token_urlsafe(12), ["topic readwrite loaxa/v1/#"])


async def bench_publish(broker: Mosquitto, devices: int, messages: int, batch: int) -> dict[str, Any]:
    gw = f"bench-{batch}"
    sims = make_devices(gw, devices, list(KINDS), "sim", seed=1)
    expect = devices * messages
    got = 0
    done = asyncio.Event()
    auth = {"username": BENCH_USER.username, "password": BENCH_USER.password}
    async with (
        aiomqtt.Client(
            "127.0.0.1", port=broker.port, identifier=f"bench-sub-{batch}", max_queued_incoming_messages=0, **auth
        ) as sub,
        aiomqtt.Client("127.0.0.1", port=broker.port, identifier=f"bench-pub-{batch}", **auth) as pub,
    ):
        pub.pending_calls_threshold = 1000
        await sub.subscribe(f"loaxa/v1/{gw}/dev/+/telemetry", qos=1)

        async def listen() -> None:
            nonlocal got
            async for msg in sub.messages:
                got += len(json.loads(bytes(msg.payload)).get("readings", [None]))  # type: ignore[arg-type]
                if got >= expect * batch:
                    done.set()

        listener = asyncio.create_task(listen())
        stats = PublishStats()
        t0 = time.perf_counter()
        await publish_sim_sensors(pub, gw, sims, interval_s=0.001, batch=batch, messages=messages, stats=stats)
        await asyncio.wait_for(done.wait(), 120)
        elapsed = time.perf_counter() - t0
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
    return {
        "batch": batch,
        "messages": stats.messages,
        "readings": got,
        "elapsed_s": round(elapsed, 2),
        "readings_per_s": round(got / elapsed),
        "messages_per_s": round(stats.messages / elapsed),
    }


def _pty_pair(socat: str, tmp: str) -> tuple[subprocess.Popen[bytes], str, str]:
    a, b = f"{tmp}/gw", f"{tmp}/sensor"
    proc = subprocess.Popen(
        [socat, f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while not (os.path.exists(a) and os.path.exists(b)):
        time.sleep(0.02)
    return proc, a, b


async def bench_modbus(polls: int) -> dict[str, Any]:
    from pymodbus.server import ModbusSerialServer
    from pymodbus.simulator import SimData, SimDevice
    from pymodbus.simulator.simutils import DataType

    from devices.sensors.config import ModbusRtuConfig
    from devices.sensors.factory import build_sensor_drivers

    socat = shutil.which("socat")
    if socat is None:
        return {"skipped": "socat not installed"}
    with tempfile.TemporaryDirectory(prefix="loaxa-bench-modbus-") as tmp:
        proc, a, b = await asyncio.to_thread(_pty_pair, socat, tmp)
        try:
            bits = [SimData(0, values=False, datatype=DataType.BITS)]
            regs = [SimData(0, count=10, values=1234, datatype=DataType.REGISTERS)]
            server = ModbusSerialServer(
                [SimDevice(u, simdata=(bits, list(bits), regs, list(regs))) for u in (1, 2)], port=b, baudrate=19200
            )
            task = asyncio.create_task(server.serve_forever())
            await asyncio.sleep(0.3)
            cfgs = [
                ModbusRtuConfig.model_validate(
                    {
                        "id": f"s{u}",
                        "type": "modbus_rtu",
                        "port": a,
                        "baudrate": 19200,
                        "unit_id": u,
                        "measurement": "environment",
                        "registers": [
                            {"field": "temperature_c", "address": 0, "type": "int16", "scale": 0.1},
                            {"field": "humidity_pct", "address": 1, "scale": 0.1},
                        ],
                    }
                )
                for u in (1, 2)
            ]
            drivers = build_sensor_drivers(cfgs, gateway_id="bench")
            t0 = time.perf_counter()
            ok = 0
            for i in range(polls):
                ok += len(await drivers[i % 2].poll_once())  # type: ignore[attr-defined]
            elapsed = time.perf_counter() - t0
            for d in drivers:
                await d.close()  # type: ignore[attr-defined]
            await server.shutdown()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.wait, 5)
    return {
        "polls": polls,
        "ok": ok,
        "elapsed_s": round(elapsed, 2),
        "polls_per_s": round(polls / elapsed),
        "ms_per_poll": round(1000 * elapsed / polls, 2),
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=500)
    ap.add_argument("--messages", type=int, default=20, help="messages per device and run")
    ap.add_argument("--polls", type=int, default=300)
    args = ap.parse_args()

    gens = bench_generators()
    print("simulated sensor samples/s:", ", ".join(f"{k} {v:,}" for k, v in gens.items()), flush=True)
    with tempfile.TemporaryDirectory(prefix="loaxa-bench-sensors-") as tmp:
        # one account for the bench's publisher (all simulated sensors) and its reader: no anonymous broker
        broker = Mosquitto(Path(tmp) / "mosquitto", users=[BENCH_USER]).start()
        try:
            single = await bench_publish(broker, args.devices, args.messages, 1)
            print(
                f"sim sensors → Mosquitto, single readings: {single['readings_per_s']:,} readings/s "
                f"({single['readings']:,} in {single['elapsed_s']} s)",
                flush=True,
            )
            batched = await bench_publish(broker, args.devices, args.messages, 10)
            print(
                f"sim sensors → Mosquitto, batches of 10:   {batched['readings_per_s']:,} readings/s "
                f"({batched['readings']:,} in {batched['elapsed_s']} s)",
                flush=True,
            )
        finally:
            broker.stop()
    modbus = await bench_modbus(args.polls)
    if "polls_per_s" in modbus:
        print(
            f"modbus over pty: {modbus['polls_per_s']} polls/s, {modbus['ms_per_poll']} ms per poll "
            f"({modbus['ok']}/{modbus['polls']} ok)",
            flush=True,
        )
    print(
        json.dumps(
            {
                "bench": "sensors",
                "generators_samples_per_s": gens,
                "publish_single": single,
                "publish_batch10": batched,
                "modbus_pty": modbus,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
