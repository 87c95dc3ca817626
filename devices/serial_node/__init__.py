"""Serial speaker and sensor nodes (microcontrollers on UART/RS-485, spoken to through firmware_bridge)."""
