"""lorafarm's command line and the local farm launcher (``make run``, e2e tests, benchmarks)."""
