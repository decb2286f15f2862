#!/usr/bin/env bash
# Download the wheels scripts/ops/gpu-check.sh needs on a GPU machine without a package
# index, for CPython 3.12 on manylinux x86_64, into scripts/ops/gpu-wheels/ (gitignored).
# Carry that folder to the machine with the working tree (the device runner's `carry`).
#
#   TORCH_VERSION=2.9.0 scripts/ops/fetch-gpu-wheels.sh   # the GPU machine's torch
#
# torchvision must match that torch (torchvision 0.(m+15) for torch 2.m); it is fetched
# without dependencies so that pip never replaces the machine's own torch.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DEST=$ROOT/scripts/ops/gpu-wheels
TORCH_VERSION=${TORCH_VERSION:-$(python -c 'import torch; print(torch.__version__.split("+")[0])')}
mkdir -p "$DEST"
PLATFORM=(--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux_2_28_x86_64 --platform any --python-version 3.12
          --implementation cp --abi cp312 --abi abi3 --abi none --only-binary=:all:)
grep -v '^\s*#' "$ROOT/scripts/ops/gpu-wheels.txt" | grep -v '^\s*$' > "$DEST/requirements.txt"
python -m pip download --no-deps "${PLATFORM[@]}" -d "$DEST" -r "$DEST/requirements.txt"
minor=$(echo "$TORCH_VERSION" | cut -d. -f2)
python -m pip download --no-deps "${PLATFORM[@]}" -d "$DEST" "torchvision==0.$((minor + 15)).*"
du -sh "$DEST"
ls "$DEST"
