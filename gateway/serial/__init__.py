"""Serial speaker and sensor nodes (UART / RS-485) behind the gateway, through firmware_bridge."""
