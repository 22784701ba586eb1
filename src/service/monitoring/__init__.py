"""What the service reports about itself: Prometheus metrics (``metrics``, the one place that
names them) and, beside them, the statistics that watch live inputs."""
