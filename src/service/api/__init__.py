"""The HTTP service: app factory, routes, request parsing, shared dependencies."""
