# Source on the lent GPU machine (repo root, wheels carried in .whl/): installs the carried wheels
# into /tmp/site and exposes the project's packages under their import names via /tmp/pk.
# .whl/ (git-ignored) holds what the machine lacks, for Python 3.12 manylinux: diffusers 0.42.1,
# pydantic 2.14.4 (+ pydantic_core 2.50.5, annotated-types 0.8.0, typing-inspection 0.4.5),
# torchao 0.18.0, ftfy 6.3.1 + wcwidth 0.9.4 (Wan's image-to-video pipeline cleans prompts with
# it), and imageio-ffmpeg 0.4.9 for dq generate's MP4s (0.8.1's wheel, 68 MB, is over the 64 MiB
# carry limit; 0.4.9's is 27 MB): `python3 -m pip download --no-deps --only-binary=:all:
# --python-version 3.12 --implementation cp --platform manylinux2010_x86_64 --platform
# manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl <each name==version>`.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
mkdir -p /tmp/pk
ln -sfn "$PWD/dq_cli" /tmp/pk/dq_cli; ln -sfn "$PWD/kernels" /tmp/pk/dq_kernels
ln -sfn "$PWD/calib" /tmp/pk/dq_calib; ln -sfn "$PWD/recipes" /tmp/pk/dq_recipes
export PYTHONPATH=/tmp/site:/tmp/pk PYTHONUNBUFFERED=1
# The commit tools/stamp_commit.sh wrote on the local machine (carried as .dq_commit), for the reports.
if [ -f .dq_commit ]; then export DQ_GIT_COMMIT=$(cat .dq_commit); fi
