"""Benchmarks: inference runtimes (``runtimes``) and the HTTP harness against the baselines."""
