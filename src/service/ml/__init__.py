"""Shared by the notebooks, the release pipeline and serving: one model, one preprocessing."""
