"""Telemetry pipeline of the gateway: sensors and LAN devices → durable SQLite spool → InfluxDB.

Modules: ``lineproto`` (line protocol text), ``validate`` (what a reading must look like),
``spool`` (the durable store, group commit), ``writer`` (InfluxDB v1 /write and v2 client),
``ingest`` (MQTT telemetry with manual PUBACK after commit), ``service`` (wires it into the gateway),
``export_cli`` (``loaxa gateway export``). See docs/telemetry.md.
"""
