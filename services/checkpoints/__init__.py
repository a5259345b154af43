"""The checkpoint store: atomic, verified, catalogued checkpoints of model state.

The storage layer (this package's modules outside ``state/``) stores named
files plus a manifest and knows nothing about torch or river; the state layer
(``state/``, ``checkpointer.py``) encodes model state into those files.
"""
