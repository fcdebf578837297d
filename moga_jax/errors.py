"""What a user can cause, as exception types: the commands print these as one line and exit 2;
every other exception is a bug and keeps its traceback (moga_jax.train.run_guard.cli_main).

Each also derives from the built-in type it used to be raised as (ValueError, FileNotFoundError),
so `except ValueError` in callers keeps working; but a bare ValueError raised inside jax, orbax or
our own code is no longer mistaken for a user's mistake.
"""

from __future__ import annotations


class UserError(Exception):
  """Something the user can fix: a flag, a config value, a file or a folder."""


class ConfigError(UserError, ValueError):
  """A config value (or a flag that sets one) that cannot work, named with what it needs."""


class InputError(UserError, ValueError):
  """A malformed input file or argument: a captions file, a prompts file, a video."""


class MissingInputError(UserError, FileNotFoundError):
  """A file or folder the user named (or a run left) that is not there."""
