"""The fleet: state of every gateway and device, remote actions, alarms and notifications.

``service.Fleet`` assembles it; ``routes.make_router`` is its HTTP API; ``cli`` its commands.
"""
