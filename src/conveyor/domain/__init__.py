"""Pure business rules: no I/O, no web framework, no database."""
