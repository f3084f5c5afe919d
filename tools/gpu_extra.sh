#!/usr/bin/env bash
# Prepare .gpu_extra/ (git-ignored; carry it with the run): imageio-ffmpeg's Python files and its
# ffmpeg binary xz-compressed (48 MB against the wheel's 68, under the 64 MiB carry limit), which
# tools/gpu_env.sh installs on the lent machine. Takes ~2.5 minutes (xz -9) on the 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 -d "$tmp" imageio-ffmpeg==0.8.1
python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$tmp"/imageio_ffmpeg-*.whl "$tmp/x"
rm -rf .gpu_extra && mkdir -p .gpu_extra
binary=$(ls "$tmp"/x/imageio_ffmpeg/binaries/ffmpeg-linux-*)
xz -T2 -9 -c "$binary" > .gpu_extra/ffmpeg.xz && rm "$binary"
mv "$tmp/x/imageio_ffmpeg" .gpu_extra/ && rm -rf "$tmp"
du -sh .gpu_extra
