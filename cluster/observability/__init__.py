"""Observability: events, the live progress view, metrics and the run history."""
