#!/usr/bin/env bash
# Set up (idempotent) and run the README's main job: federated training of the `cnn`
# model on Fashion-MNIST across 5 simulated boards (separate processes, each with its
# own 12,000 images in file order, as in the paper), 20 rounds, through the embedded
# MQTT broker. Extra arguments go to `fedcoord simulate` (e.g. --rounds 5).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/fedcoord simulate --devices 5 --rounds 20 --dataset fashion-mnist \
    --partition sequential --run-dir "runs/fashion-mnist-$(date +%Y%m%d-%H%M%S)" "$@"
