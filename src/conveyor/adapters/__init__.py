"""Adapters to the outside world: database, queue, settlement formats."""
