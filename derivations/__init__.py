"""Runnable derivation scripts, one per result (see ``signaldrift derive``)."""
