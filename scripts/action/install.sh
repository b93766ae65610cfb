#!/usr/bin/env bash
# Make `multi-image` available: the one on PATH, else this action's package in a virtualenv kept
# in the runner's tool cache (installing torch takes minutes; a warm self-hosted runner reuses it).
# Step output `bin`: the command the generate step runs.
set -euo pipefail

emit() {
  echo "multi-image: using $1"
  if [[ -n "${GITHUB_OUTPUT:-}" ]]; then printf 'bin=%s\n' "$1" >> "$GITHUB_OUTPUT"; fi
}

if existing=$(command -v multi-image); then
  emit "$existing"
  exit 0
fi

src=$(cd "${GITHUB_ACTION_PATH:?}" && pwd -P)
# Editable install: the package reads configs/*.yaml from beside its sources. So the venv is keyed
# on the source path and its contents: a new action version or checkout gets a fresh one.
key=$( { printf '%s\n' "$src"
         cd "$src" && find pyproject.toml cluster actors models configs -type f \
           \( -name '*.py' -o -name '*.yaml' -o -name '*.toml' \) -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
       } | sha256sum | cut -c1-16)
venv="${RUNNER_TOOL_CACHE:-${RUNNER_TEMP:-/tmp}}/kamui-multi-image/venv-$key"

# `.complete` marks a finished install; anything else there is a broken earlier attempt.
if [[ ! -f "$venv/.complete" ]]; then
  rm -rf "$venv"
  "${INPUT_PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "$src"
  touch "$venv/.complete"
fi
emit "$venv/bin/multi-image"
