"""Prometheus figures of the IOC API: requests by endpoint and status, their duration, InfluxDB queries."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from scheduler.ioc.client import InfluxQLClient


class _InfluxCollector(Collector):
    def __init__(self, client: InfluxQLClient):
        self.client = client

    def collect(self) -> Iterator[Metric]:
        c = CounterMetricFamily(
            "loaxa_ioc_influx_queries", "requests sent to InfluxDB by the IOC API", labels=["result"]
        )
        c.add_metric(["ok"], self.client.queries - self.client.errors)
        c.add_metric(["error"], self.client.errors)
        yield c


class IocMetrics:
    def __init__(self, registry: CollectorRegistry, client: InfluxQLClient):
        self.requests = Counter(
            "loaxa_ioc_requests", "IOC API requests by endpoint and HTTP status", ["endpoint", "code"],
            registry=registry,
        )
        self.seconds = Histogram(
            "loaxa_ioc_request_duration_seconds",
            "IOC API answer time by endpoint",
            ["endpoint"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=registry,
        )
        registry.register(_InfluxCollector(client))

    def route_class(self) -> type[APIRoute]:
        metrics = self

        class TimedRoute(APIRoute):
            def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
                handler = super().get_route_handler()
                endpoint = self.path_format

                async def timed(request: Request) -> Response:
                    t = time.perf_counter()
                    code = 500
                    try:
                        response = await handler(request)
                        code = response.status_code
                        return response
                    except HTTPException as exc:
                        code = exc.status_code
                        raise
                    except RequestValidationError:
                        code = 422
                        raise
                    finally:
                        metrics.requests.labels(endpoint, str(code)).inc()
                        metrics.seconds.labels(endpoint).observe(time.perf_counter() - t)

                return timed

        return TimedRoute
