"""Notifications of alarms: grouped, routed by role and area, sent by e-mail and webhook with retries."""
