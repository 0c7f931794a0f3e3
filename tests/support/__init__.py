"""Helpers shared by every suite: fixtures (`fixtures.py`, loaded by the root conftest), certificates, daemons, names, waiting."""
