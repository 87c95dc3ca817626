"""Loa Xã: shared plumbing (command line, YAML config loading, local server launchers, demo)."""

__version__ = "0.1.0"
