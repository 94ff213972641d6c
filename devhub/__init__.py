"""A Hub-compatible HTTP server over a folder, and the tiny model zoo it serves."""
