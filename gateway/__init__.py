"""The commune gateway (Raspberry Pi): uplink, command relay, plan executor, telemetry spool, health."""
