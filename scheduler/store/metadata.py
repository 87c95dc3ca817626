"""Every table of the scheduler, in one :class:`~sqlalchemy.MetaData`: what Alembic compares the
database with. Import each module that defines tables here, so that ``alembic revision
--autogenerate`` sees all of them (a table missing here would be proposed for dropping).
"""

from __future__ import annotations

from sqlalchemy import MetaData

import scheduler.access.models  # its tables join Base.metadata
import scheduler.areas.models  # its tables join Base.metadata
import scheduler.fleet.models  # its tables join Base.metadata
import scheduler.models
import scheduler.schedules.models  # its tables join Base.metadata
import scheduler.warnings.models  # its tables join Base.metadata

metadata: MetaData = scheduler.models.Base.metadata

__all__ = ["metadata"]
