"""The web console: partitions, workers, requests, traces and dead letters on one page."""
