"""Benchmarks and the Hub-scale simulator; each prints its figures and the command that made them."""
