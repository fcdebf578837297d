"""Attention over (query tile -> key tiles) metadata: reference, XLA and Pallas implementations."""
