"""Handlers of the built-in job types; importing this package binds them."""
