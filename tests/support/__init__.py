"""Reusable test helpers (real servers on 127.0.0.1). Pytest fixtures live in ``fixtures.py``."""
