"""Train a MoGA text-to-video model: the checkout's wrapper around `moga_jax.cli.train`, which
installed is the `moga-train` command (its docstring has the details).

  python train.py --config configs/tiny.py --workdir runs/tiny [--config.train.steps=200 ...]
  python train.py --config configs/wan1_3b_moga.py --init weights/wan1_3b_moga \
      --workdir runs/wan1_3b [--config.data.source_dir=my_clips ...]
"""

from moga_jax.cli import train_command

if __name__ == "__main__":
  train_command("train.py")
