#!/usr/bin/env bash
# Set up everything the toolkit, its demo and its tests need on this machine:
#   - Debian packages: mosquitto (a real broker for tests), dataset-fashion-mnist (data),
#     chromium + chromium-driver (the dashboard's browser tests)
#   - .venv       : the coordinator's environment (TensorFlow, ai-edge-litert, dev tools)
#   - .venv-board : a board's environment (tflite-runtime 2.14, numpy<2, no TensorFlow)
# Idempotent: a second run only checks. Set EDGEFL_SKIP_APT=1 to skip apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
# headless browser for the dashboard's end-to-end tests (driven by Selenium)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
# a real SSH server (and client) for the flashing tests of devices/ (fedcoord devices flash)
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
if [ ${#need_apt[@]} -gt 0 ] && [ -z "${EDGEFL_SKIP_APT:-}" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${need_apt[*]} with apt-get"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

stamp() { sha256sum setup.cfg pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16; }
want=$(stamp)

if [ "$(cat .venv/.edgefl-stamp 2>/dev/null)" != "$want" ]; then
  echo "setup: coordinator environment .venv"
  [ -x .venv/bin/python ] || $PY -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[coordinator,dev,images]'
  echo "$want" > .venv/.edgefl-stamp
fi

if [ "$(cat .venv-board/.edgefl-stamp 2>/dev/null)" != "$want" ]; then
  echo "setup: board environment .venv-board (tflite-runtime 2.14, numpy<2, no TensorFlow)"
  [ -x .venv-board/bin/python ] || $PY -m venv .venv-board
  .venv-board/bin/python -m pip install -q --upgrade pip
  .venv-board/bin/python -m pip install -q -e '.[board-legacy]'
  echo "$want" > .venv-board/.edgefl-stamp
fi
