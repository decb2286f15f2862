"""Loaded classifiers (torch): built-ins, user model files, the per-process cache."""
