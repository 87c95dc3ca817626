"""Schedules: when a programme plays (RFC 5545 recurrence in a named time zone), at which level,
and what collides with what. The modules here are pure logic (no database, no network) so that
the scheduler, the CLI's dry run and, later, the gateway can share them.
"""
