#!/usr/bin/env bash
# Prints the newest Python >= 3.12 on this machine (PATH or pyenv), else a Python 3.11.
# JAX stops at 0.10.2 on 3.11; the newest JAX needs 3.12+.
set -euo pipefail

candidates=()
for minor in 14 13 12; do
  command -v "python3.$minor" >/dev/null 2>&1 && candidates+=("$(command -v "python3.$minor")")
done
pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
if [ -d "$pyenv_root/versions" ]; then
  for exe in "$pyenv_root"/versions/3.*/bin/python3; do
    [ -x "$exe" ] && candidates+=("$exe")
  done
fi
candidates+=(python3 python3.11)

best="" best_minor=0
for exe in "${candidates[@]}"; do
  command -v "$exe" >/dev/null 2>&1 || continue
  minor=$("$exe" -c 'import sys; print(sys.version_info[1] if sys.version_info[0] == 3 else 0)' \
          2>/dev/null) || continue
  # venv is needed to build the environment; some minimal builds lack it.
  "$exe" -c 'import venv, ensurepip' >/dev/null 2>&1 || continue
  if [ "$minor" -ge 11 ] && [ "$minor" -gt "$best_minor" ]; then
    best="$exe" best_minor="$minor"
  fi
done

if [ -z "$best" ]; then
  echo "pick_python: no Python >= 3.11 with venv found (tried: ${candidates[*]})" >&2
  exit 1
fi
echo "$best"
