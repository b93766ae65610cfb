#!/usr/bin/env bash
# Legacy behaviour: commit {folder-name}/ and push it to `branch-name` for the jobs that follow.
#
# The folder is the one the CLI wrote (two levels above its generation-report output). The commit
# message is fixed text plus that folder, written to a file and passed with -F: the prompt never
# reaches git or a shell.
set -euo pipefail
# The folder is a path, never a pattern: without this, git reads folder-name `*`, `.*` or
# `:(exclude)x` as a pathspec, and the forced add below publishes the whole workspace, gitignored
# secrets included.
export GIT_LITERAL_PATHSPECS=1

branch="${INPUT_BRANCH_NAME:?}"
report="${GENERATION_REPORT:?the generate step wrote no generation-report output}"
cd "${GITHUB_WORKSPACE:?}"

folder=$(realpath -ms --relative-to=. "$(dirname "$(dirname "$report")")")
# what the log shows: shell-quoted, so a folder named like a workflow command (`##[error]x`)
# is not read as one by the runner
shown=$(printf '%q' "$folder")
if [[ "$folder" == /* || "$folder" == .. || "$folder" == ../* || "$folder" == . ]]; then
  echo "error: folder-name $shown is not inside the workspace; cannot commit it (set commit-results: 'false')" >&2
  exit 1
fi
if [[ "$folder" == *[[:cntrl:]]* ]]; then  # the CLI refuses these already; the message is one line
  echo "error: folder-name holds control characters" >&2
  exit 1
fi

# the runner's checkout usually has no identity configured; fall back to the Actions bot
identity=()
git config user.name >/dev/null || identity+=(-c "user.name=github-actions[bot]")
git config user.email >/dev/null || identity+=(-c "user.email=41898282+github-actions[bot]@users.noreply.github.com")

# --force: the folder is published even where .gitignore would hide images. It holds only what
# the run made (the CLI refuses a folder with anything else in it), and the path is literal.
git add --force --all -- "$folder"
if git diff --cached --quiet -- "$folder"; then
  echo "multi-image: $shown unchanged, nothing to commit"
else
  message=$(mktemp "${RUNNER_TEMP:-/tmp}/multi-image-message.XXXXXX")
  trap 'rm -f "$message"' EXIT
  printf 'multi-image: add images to %s\n' "$folder" > "$message"
  git "${identity[@]}" commit --quiet -F "$message" -- "$folder"
fi

# Another job may have pushed to the branch meanwhile: rebase onto it and try again.
for attempt in 1 2 3; do
  if git push --quiet origin "HEAD:refs/heads/$branch"; then
    echo "multi-image: pushed $shown to $branch"
    exit 0
  fi
  [[ $attempt -lt 3 ]] || break
  sleep $((attempt * 2))
  git fetch --quiet origin "+refs/heads/$branch:refs/remotes/origin/$branch"
  git "${identity[@]}" rebase --quiet "origin/$branch"
done
echo "error: could not push to $branch" >&2
exit 1
