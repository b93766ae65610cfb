#!/usr/bin/env bash
# The legacy step's oauth-token / mcp-config inputs are accepted for compatibility and ignored.
# This step gets neither value (the runner only evaluates them in `if:`), so it cannot leak them.
set -euo pipefail
echo "::warning title=multi-image::the oauth-token and mcp-config inputs are deprecated and ignored; remove them from the workflow."
