"""The scheduler's storage layer: engine set-up (:mod:`.engine`), the full model metadata
(:mod:`.metadata`) and the Alembic migrations (:mod:`.migrate`, ``migrations/``).

The table classes live in ``scheduler/models.py`` (and, later, each feature's own ``models.py``);
:mod:`scheduler.db` holds the :class:`~scheduler.db.Store` that reads and writes them.
"""
