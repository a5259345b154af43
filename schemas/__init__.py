"""Event and manifest models of driftloop's external contract, and their codecs.

This package holds data and validation only: no network, no files beyond the
JSON Schema exports shipped beside it.
"""
