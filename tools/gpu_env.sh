# Source on the lent GPU machine (repo root, wheels carried in .whl/): installs the carried wheels
# into /tmp/site and exposes the project's packages under their import names via /tmp/pk.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
mkdir -p /tmp/pk
ln -sfn "$PWD/dq_cli" /tmp/pk/dq_cli; ln -sfn "$PWD/kernels" /tmp/pk/dq_kernels
ln -sfn "$PWD/calib" /tmp/pk/dq_calib; ln -sfn "$PWD/recipes" /tmp/pk/dq_recipes
export PYTHONPATH=/tmp/site:/tmp/pk PYTHONUNBUFFERED=1
# The commit tools/stamp_commit.sh wrote on the local machine (carried as .dq_commit), for the reports.
if [ -f .dq_commit ]; then export DQ_GIT_COMMIT=$(cat .dq_commit); fi
# MP4 output: the lent machine has imageio but not imageio-ffmpeg, whose wheel (68 MB) is over the
# carry limit. tools/gpu_extra.sh puts its Python files and its ffmpeg, xz-compressed, in .gpu_extra/.
if [ -d .gpu_extra/imageio_ffmpeg ] && ! python3 -c "import imageio_ffmpeg" 2>/dev/null; then
  cp -r .gpu_extra/imageio_ffmpeg /tmp/site/
  if command -v ffmpeg > /dev/null; then export IMAGEIO_FFMPEG_EXE=$(command -v ffmpeg)
  elif [ -f .gpu_extra/ffmpeg.xz ]; then
    xz -dc .gpu_extra/ffmpeg.xz > /tmp/ffmpeg && chmod +x /tmp/ffmpeg && export IMAGEIO_FFMPEG_EXE=/tmp/ffmpeg
  fi
fi
