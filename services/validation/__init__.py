"""Validation: the gateway that judges candidate checkpoints and the guard that
rolls back a regressed live version (see :mod:`services.validation.base`)."""
