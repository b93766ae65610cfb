#!/usr/bin/env bash
# Run `multi-image generate` with the action's inputs (INPUT_* env vars).
#
# The argv is a bash array and every value goes as one `--flag=value` word: the prompt is never
# evaluated by a shell, and a value starting with '-' cannot be taken for a flag. The CLI appends
# the nine step outputs to $GITHUB_OUTPUT itself; this script adds `comparison-report`.
# INPUT_CONFIG is the branch step's copy of the file when there is one (read before its checkout).
set -euo pipefail

args=(generate
  "--image-prompt=${INPUT_IMAGE_PROMPT-}"
  "--folder-name=${INPUT_FOLDER_NAME-}")
# optional flags: an empty input means "the CLI's default", so the flag is left out
optional() {
  if [[ -n "$2" ]]; then args+=("$1=$2"); fi
}
optional --image-count "${INPUT_IMAGE_COUNT-}"
optional --models "${INPUT_MODELS-}"
optional --generation-strategy "${INPUT_GENERATION_STRATEGY-}"
optional --enable-comparison "${INPUT_ENABLE_COMPARISON-}"
optional --quality-threshold "${INPUT_QUALITY_THRESHOLD-}"
optional --max-parallel "${INPUT_MAX_PARALLEL-}"
optional --address "${INPUT_RAY_ADDRESS-}"
optional --upload-uri "${INPUT_UPLOAD_URI-}"
optional --config "${INPUT_CONFIG-}"
optional --scorer "${INPUT_SCORER-}"
optional --budget-usd "${INPUT_BUDGET_USD-}"
optional --adapters "${INPUT_ADAPTERS-}"

# folder-name (and config) are relative to the workspace, as in the legacy step
cd "${GITHUB_WORKSPACE:-.}"

# remember where this run's outputs start, to read back the report path the CLI wrote
outputs_before=0
if [[ -n "${GITHUB_OUTPUT:-}" && -f "$GITHUB_OUTPUT" ]]; then
  outputs_before=$(stat -c %s "$GITHUB_OUTPUT")
fi

status=0
"${MULTI_IMAGE_BIN:-multi-image}" "${args[@]}" || status=$?

# comparison-report sits beside generation-report (same relative/absolute form). The CLI writes
# generation-report on exit 0 and 1 (a failed run still has a report) and nothing on exit 2.
if [[ -n "${GITHUB_OUTPUT:-}" && -f "$GITHUB_OUTPUT" ]]; then
  report=$(tail -c "+$((outputs_before + 1))" "$GITHUB_OUTPUT" | sed -n 's/^generation-report=//p' | tail -n 1)
  if [[ -n "$report" ]]; then
    comparison="$(dirname "$report")/model-comparison.md"
    if [[ -f "$comparison" ]]; then
      printf 'comparison-report=%s\n' "$comparison" >> "$GITHUB_OUTPUT"
    fi
  fi
fi

# Exit 2: the input was invalid and nothing was written. The branch step had already switched the
# workspace to branch-name; go back, so later steps of the job find it where the workflow left it.
if [[ $status -eq 2 && -n "${START_REF:-}" ]]; then
  git checkout --quiet "$START_REF" -- || echo "error: could not return to the starting branch or commit" >&2
fi
exit "$status"
