"""Simulators of devices: same wire behaviour as the real ones."""
