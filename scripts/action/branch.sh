#!/usr/bin/env bash
# Legacy behaviour: generate on `branch-name`, so the commit step can push the folder there.
# The branch is checked out tracking origin when it exists there, else created from HEAD.
#
# Step outputs, both taken before the checkout:
#   start-ref  the branch (or commit) the workspace was on, which the generate step returns to
#              when the input is invalid (the CLI wrote nothing, so there is nothing to commit)
#   config     a copy of the `config` input's file as the triggering commit has it: the results
#              branch need not hold that file, or may hold an older one
set -euo pipefail

branch="${INPUT_BRANCH_NAME:-}"
if [[ -z "$branch" || "$branch" == -* ]] || ! git check-ref-format --branch "$branch" >/dev/null 2>&1; then
  echo "error: branch-name is not a valid branch name" >&2
  exit 2
fi
cd "${GITHUB_WORKSPACE:?}"

output() {
  if [[ -n "${GITHUB_OUTPUT:-}" ]]; then printf '%s=%s\n' "$1" "$2" >> "$GITHUB_OUTPUT"; fi
}
start=$(git symbolic-ref --quiet --short HEAD || git rev-parse --verify --quiet HEAD || true)
output start-ref "$start"
config="${INPUT_CONFIG:-}"
if [[ -n "$config" && -f "$config" ]]; then
  name=$(basename -- "$config")
  # the name stays (errors cite it); one the output file could not hold safely is replaced
  if [[ "$name" == *[[:cntrl:]]* ]]; then name=models.yaml; fi
  copy="$(mktemp -d "${RUNNER_TEMP:-/tmp}/multi-image-config.XXXXXX")/$name"
  cp -- "$config" "$copy"
  output config "$copy"
fi

# ls-remote --exit-code: 0 = the branch exists, 2 = it does not; anything else (no origin, no
# network, no access) must not be mistaken for "does not exist": the push would then be rejected.
if git ls-remote --quiet --exit-code --heads origin "refs/heads/$branch" >/dev/null; then
  git fetch --quiet origin "+refs/heads/$branch:refs/remotes/origin/$branch"
  git checkout --quiet -B "$branch" --track "origin/$branch"
  echo "multi-image: on branch $branch (from origin)"
else
  status=$?
  if [[ $status -ne 2 ]]; then
    echo "error: cannot read branch $branch from origin (git ls-remote exited $status)" >&2
    exit 1
  fi
  # -B: a stale local branch of an earlier attempt is reset to HEAD
  git checkout --quiet -B "$branch"
  echo "multi-image: on new branch $branch (from HEAD)"
fi
