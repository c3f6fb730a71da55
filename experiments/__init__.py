"""Runnable experiments from the research backlog, importable as plain modules."""
