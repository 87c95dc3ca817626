"""Alarm rules, the lifecycle of one alarm, and the engine that runs them."""
