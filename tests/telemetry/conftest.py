"""The telemetry tests' broker: a commune LAN Mosquitto with the production ACL for gateway ``GW``
(``configs/mosquitto/commune-lan.acl.example``), the gateway's account and one account per device."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from loaxa.brokers import LanBroker

from .helpers import GW


@pytest.fixture
def mosquitto(lan_broker_factory: Callable[..., LanBroker]) -> LanBroker:
    return lan_broker_factory(GW, devices=["s1", "s2"])
