"""Observability for a TrainNet run: live dashboard (static page + /v1/dashboard), Prometheus /metrics,
and `trainnet report` (plots of a finished run or a simulation). See docs/OBSERVABILITY.md."""
