"""Fixtures of the browser tests: one chromium per module, one real scheduler (with its broker) per module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from loaxa.brokers import CentralBroker
from loaxa.servers import ServerUnavailable
from tests.web.support import SchedulerProcess, launch_chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SchedulerProcess]:
    tmp = tmp_path_factory.mktemp("web")
    try:
        broker = CentralBroker(tmp / "mosquitto").start()
    except ServerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    sched = SchedulerProcess.start(tmp, broker)
    yield sched
    sched.stop()
    broker.stop()
