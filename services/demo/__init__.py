"""The demo: synthetic production traffic through the whole loop on the embedded stack."""
