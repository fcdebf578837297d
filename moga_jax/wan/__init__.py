"""Wan 2.1 components in JAX: weight import (safetensors), the DiT mapping, VAE and umT5."""
