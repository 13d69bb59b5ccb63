#!/usr/bin/env bash
# Set up napari-cinema on a fresh Debian/Ubuntu machine: system libraries for Qt under X (and Xvfb for
# headless tests), a virtual environment in .venv, and the package with its test tools. torch and PyQt6
# are pinned by constraints.txt so pip never pulls the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends \
    xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-xinerama0 \
    libxcb-randr0 libxcb-shape0 libxcb-cursor0 libxkbcommon-x11-0 libgl1 libegl1 libdbus-1-3 \
    libfontconfig1 libglib2.0-0
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
.venv/bin/python -m pip install -c constraints.txt -e ".[testing]"
echo "napari-cinema is set up in .venv"
