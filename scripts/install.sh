#!/usr/bin/env bash
# Installs specpatch and everything its examples and tests need, on a fresh Debian/Ubuntu CPU machine or in CI.
# Idempotent: steps whose result is already present are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: FFmpeg's shared libraries, which torchcodec (the audio decoder of `datasets`) loads at run time,
# and espeak-ng, which synthesises the spoken-keyword task of the learning benchmarks (benchmarks/keyword_task.py).
missing=()
ldconfig -p 2>/dev/null | grep -q libavcodec || missing+=(ffmpeg)
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "warning: missing ${missing[*]}: install them (FFmpeg decodes audio through datasets/torchcodec;" \
             "espeak-ng is needed by the learning benchmarks)" >&2
    fi
fi

# PyTorch: keep an existing install (e.g. a CUDA build); otherwise the CPU build 2.13.0
# (on a machine with internet access, prefer: pip install torch --index-url https://download.pytorch.org/whl/cpu).
if ! python -c "import torch" 2>/dev/null; then
    python -m pip install -q "torch==2.13.0"
fi

python -m pip install -q -e ".[test]"
