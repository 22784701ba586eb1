"""Serving-side inference: runtimes, the micro-batcher and the prediction cache."""
