"""CAP 1.2 intake (alerts from the province → broadcasts to the matched communes) and local warning
rules sent to gateways. See docs/warnings.md."""
