"""Training: the one loop every run goes through (`loop`), the product it trains (`pipeline`:
tiny or Wan, from config.pipeline), the optimizer, train state and jitted step (`state`),
checkpoints, the EMA, what keeps a long run safe (`run_guard`), the metrics log, config checks
and config files, the loss plot."""
