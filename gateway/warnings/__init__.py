"""Local warning rules: the gateway turns its own sensor readings into a warning on its own speakers,
with the uplink cut (issue 14, docs/warnings.md)."""
