"""The central scheduler: registry, audio library, schedules, plan dispatch, REST API and web UI."""
