"""Use cases: each entrypoint calls one of these."""
