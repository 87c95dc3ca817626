"""Framed serial protocol to microcontroller firmware in speakers and sensor nodes."""
