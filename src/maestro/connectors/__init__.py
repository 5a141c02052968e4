"""Connector step types: one module per provider, sharing the resources in ``base``."""
