"""Device drivers behind a gateway (speakers, sensors, the Pi itself) and simulators of each."""
