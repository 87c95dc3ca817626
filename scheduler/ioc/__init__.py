"""The IOC read API: ``/ioc/v1`` over InfluxQL (docs/ioc-api.md).

``make_router(settings, principal_dep)`` builds the FastAPI router; ``IocSettings.from_section``
reads the scheduler config's ``influx:`` section.
"""

from scheduler.ioc.routes import IocApi, make_router
from scheduler.ioc.settings import IocSettings, IocSetupError

__all__ = ["IocApi", "IocSettings", "IocSetupError", "make_router"]
