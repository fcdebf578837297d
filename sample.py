"""Sample a multi-shot video, one shot per --prompt: the checkout's wrapper around
`moga_jax.cli.sample`, which installed is the `moga-sample` command (its docstring has the
details).

  python sample.py --config configs/tiny.py --workdir runs/tiny \
      --prompt "a red circle moving right on a blue background" \
      --prompt "a yellow square moving up on a green background" --output runs/tiny/sample.mp4
  python sample.py --config configs/wan1_3b_moga.py --weights weights/wan1_3b_moga \
      --prompt "a red fox runs through snow" --output fox.mp4
"""

from moga_jax.cli import sample_command

if __name__ == "__main__":
  sample_command("sample.py")
