#!/usr/bin/env bash
# Build the one-folder bundle dist/ielstudio/ in a fresh virtual environment with the CPU torch.
#
#   packaging/build.sh                 # from anywhere; output in <repo>/dist/ielstudio
#
# Environment: PYTHON (default python3, 3.11+), TORCH_SPEC (default torch==2.13.0),
# TORCH_INDEX (optional pip index for torch, e.g. https://download.pytorch.org/whl/cpu on a
# machine where plain PyPI would give the CUDA build), BUILD_VENV (default build/bundle-venv).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
VENV=${BUILD_VENV:-$ROOT/build/bundle-venv}
cd "$ROOT"

echo "== fresh venv: $VENV"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip

echo "== $TORCH_SPEC (CPU build) first, so the app's torch requirement is already met"
if [ -n "${TORCH_INDEX:-}" ]; then
  "$PY" -m pip install -q "$TORCH_SPEC" --index-url "$TORCH_INDEX"
else
  "$PY" -m pip install -q "$TORCH_SPEC"
fi
"$PY" -c 'import sys, torch; print("torch", torch.__version__, "cuda", torch.version.cuda); sys.exit(1 if torch.version.cuda else 0)' \
  || { echo "build.sh: this torch is a CUDA build; set TORCH_INDEX=https://download.pytorch.org/whl/cpu" >&2; exit 1; }

echo "== the app (not editable) and PyInstaller"
"$PY" -m pip install -q "$ROOT" "pyinstaller>=6.10"

echo "== PyInstaller"
rm -rf "$ROOT/dist/ielstudio"
start=$(date +%s)
"$VENV/bin/pyinstaller" --noconfirm --clean --log-level WARN \
  --distpath "$ROOT/dist" --workpath "$ROOT/build/pyinstaller" "$ROOT/packaging/ielstudio.spec"
end=$(date +%s)

BUNDLE="$ROOT/dist/ielstudio"
test -x "$BUNDLE/ielstudio" || { echo "build.sh: no executable in $BUNDLE" >&2; exit 1; }
if find "$BUNDLE" -name 'libcu*' -o -name 'libnccl*' -o -name 'libcudnn*' | grep -q .; then
  echo "build.sh: CUDA libraries found in the bundle" >&2; exit 1
fi
echo "== built $BUNDLE in $((end - start)) s, size $(du -sh "$BUNDLE" | cut -f1)"
echo "   next: packaging/smoke.sh"
