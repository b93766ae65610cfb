#!/usr/bin/env bash
# Prepare the GPU check for a lent GPU machine, and print the command to run there.
#
# That machine has torch, transformers, accelerate, safetensors, pyyaml, pillow and numpy (Python
# 3.12), no network, and none of diffusers, open_clip, ftfy, pydantic or torchao: they travel as wheels in
# .whl/ (ignored by git, carried by the device tool). Ray does not travel (its wheel is larger than
# a call can carry), so the check runs the product's Ray-free classes: scripts/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."

# The versions of the project's own environment (what scripts/test.sh and CI resolved), so the
# check runs the code CI runs: .venv's python unless PYTHON names another. A package that
# environment lacks is an error, never an unpinned download of whatever is newest.
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else
    echo "error: no .venv here: run ./scripts/test.sh once (it builds the project's environment), or set" \
         "PYTHON to the python of an environment with the project installed" >&2
    exit 1
  fi
fi
version() { "$python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || echo ""; }
want=()
for package in diffusers open_clip_torch ftfy wcwidth pydantic pydantic_core annotated_types typing_inspection torchao; do
  v=$(version "$package")
  if [[ -z "$v" ]]; then
    echo "error: $python has no $package, so its version cannot be pinned; install the project there" \
         "(pip install -e '.[test]') or set PYTHON to the project's environment" >&2
    exit 1
  fi
  want+=("${package}==$v")
done
echo "pinned to $python's environment: ${want[*]}" >&2

wheels=.whl
mkdir -p "$wheels"
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"

rm -f "$wheels"/*.whl
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$wheels" "${want[@]}"

size=$(du -sk "$wheels" | cut -f1)
tree=$(git ls-files -co --exclude-standard | xargs -d '\n' du -ck 2>/dev/null | tail -1 | cut -f1)
echo "wheels: $(ls "$wheels" | wc -l) files, $((size / 1024)) MiB; tree and wheels: $(((size + tree) / 1024)) MiB (limit 64)" >&2
if (( size + tree > 60 * 1024 )); then
  echo "error: more than 60 MiB would travel; remove what is not needed" >&2
  exit 1
fi

cat <<'COMMAND'
# on the GPU machine (device tool: carry [".whl"], timeout_s 540):
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 KAMUI_CACHE_DIR=/tmp/kamui \
  && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  && python3 scripts/gpu_check.py --budget 420 --out "$OUT"
COMMAND
