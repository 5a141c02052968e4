"""Audit, and later policy, provenance and retention (DESIGN §6)."""
