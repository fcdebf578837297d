"""The CPU reproduction of the paper's claims (`run`, `plots`), its cross-shot consistency
data (`consistency_data`) and metrics (`eval`). `python -m moga_jax.reproduction.run`."""
