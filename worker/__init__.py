"""A worker keeps one base pipeline warm and serves its pool's jobs, swapping adapters per job."""
