#!/usr/bin/env bash
# Install fednas and its whole stack into .venv (idempotent).
# Usage: bash scripts/install.sh   (called by `make run` / `make test`)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
PIP="pip_quiet"
L2L_DIR=build/l2l

say() { printf '\033[1m[fednas install]\033[0m %s\n' "$*"; }
# pip, minus the machine-local "Location ... is ignored" notices some pip configs print
pip_quiet() { "$VENV/bin/python" -m pip "$@" 2> >(grep -v "^WARNING: Location '" >&2); }

"$PYTHON" - <<'PY' || { echo "fednas needs Python >= 3.11 (found $("$PYTHON" --version 2>&1))" >&2; exit 1; }
import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

# 1. Debian data packages (offline real data). Optional: a clear message otherwise.
need_apt=()
[ -d /usr/share/datasets/fashion-mnist ] || need_apt+=(dataset-fashion-mnist)
ls /usr/share/fonts/truetype/noto/NotoSans-Regular.ttf >/dev/null 2>&1 || need_apt+=(fonts-noto-core)
if [ ${#need_apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    say "installing Debian data packages: ${need_apt[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null) \
      || say "WARNING: apt-get could not install ${need_apt[*]}; the fashion-mnist/glyphs datasets will be unavailable offline"
  else
    say "NOTE: not root or no apt-get: install '${need_apt[*]}' yourself (Debian/Ubuntu) for offline Fashion-MNIST and glyphs;"
    say "      otherwise fednas downloads Fashion-MNIST with torchvision when the network is there."
  fi
fi

# 2. Python environment.
[ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
$PIP install -q --upgrade "pip>=23.2" >/dev/null
say "installing torch, flwr and the rest (several minutes on first run)"
$PIP install -q torch==2.14.1 torchvision==0.29.1
$PIP install -q -r requirements.txt

# 3. learn2learn 0.2.0: its sdist ships C files from an old Cython that fail on Python 3.11.
#    Regenerate them, then install without its declared deps (qpth forces numpy<2, gsutil is huge).
if ! "$VENV/bin/python" -c "import learn2learn" >/dev/null 2>&1; then
  say "building learn2learn 0.2.0 with regenerated Cython sources"
  mkdir -p "$L2L_DIR"
  [ -f "$L2L_DIR/learn2learn-0.2.0.tar.gz" ] || $PIP download -q learn2learn==0.2.0 --no-deps -d "$L2L_DIR"
  rm -rf "$L2L_DIR/learn2learn-0.2.0"
  tar xzf "$L2L_DIR/learn2learn-0.2.0.tar.gz" -C "$L2L_DIR"
  "$VENV/bin/cython" -3 "$L2L_DIR"/learn2learn-0.2.0/learn2learn/data/{meta_dataset,task_dataset,transforms}.pyx
  $PIP install -q --no-deps --no-build-isolation "./$L2L_DIR/learn2learn-0.2.0" >/dev/null
fi

# 4. fednas itself (editable), deps already satisfied above.
$PIP install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
  || $PIP install --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import torch, flwr, learn2learn, fednas" >/dev/null 2>&1 \
  || { "$VENV/bin/python" -c "import torch, flwr, learn2learn, fednas"; echo "fednas install check failed" >&2; exit 1; }
touch "$VENV/.fednas-installed"
say "done: $("$VENV/bin/python" -c 'import torch, flwr; print(f"torch {torch.__version__}, flwr {flwr.__version__}")')"
