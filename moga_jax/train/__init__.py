"""Training: the optimizer, train state and jitted step (`state`), checkpoints, the EMA, what
keeps a long run safe (`run_guard`), config checks and config files, the loss plot."""
