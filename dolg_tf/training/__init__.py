"""Training: configuration, learning-rate schedules and the distributed loop."""
