# One GPU session comparing the Hopper W4A4 kernel's two INT4 formats, int4_pow2 and int4_row:
# the GPU kernel tests, `dq bench kernels` at Wan A14B 480p and 720p in each format, then
# (PART=quality) DeltaQuant W4A4 quality on dq-tiny per format on the kernels, with 8-bit attention.
# Logs and reports in $OUT.
source tools/gpu_env.sh || exit 1
L=$OUT/log.txt
{ nvidia-smi --query-gpu=name,driver_version --format=csv; python -c "import torch,triton;print(torch.__version__,triton.__version__)"; } > $L 2>&1
if [ "${PART:-kernels}" = kernels ]; then
  echo "== gpu tests $(date +%T)" >> $L
  timeout -s KILL 150 python -P -m pytest -m gpu -q tests/test_kernels_w4a4.py >> $L 2>&1
  mkdir -p $OUT/k
  for s in wan-a14b-480p wan-a14b-720p; do for f in int4_row int4_pow2; do
    echo "== bench kernels $s $f $(date +%T)" >> $L
    timeout -s KILL 90 python -P -m dq_cli bench kernels --shapes $s --w4a4-format $f --out $OUT/k/kernels_${f}_$s -q >> $L 2>&1
  done; done
  cat $OUT/k/*.md > $OUT/kernels.md 2>/dev/null; tar cf $OUT/kernels_json.tar -C $OUT/k . && rm -rf $OUT/k
else
  N=${N:-16}
  echo "== compare_methods $(date +%T)" >> $L
  timeout -s KILL 420 python -P tools/compare_methods.py --out /tmp/cmp --prompts $N --jobs 3 \
      --only dq_pow2 dq_row dq_pow2_w_row_a >> $L 2>&1
  cp /tmp/cmp/quality.md /tmp/cmp/quality.json $OUT/ 2>/dev/null
  echo "== sage8 $(date +%T)" >> $L
  timeout -s KILL 120 python -P -m dq_cli bench --quality -n $N -c /tmp/cmp/dq_row.safetensors \
      -c /tmp/cmp/dq_pow2_w_row_a.safetensors --attention sage8 --device cuda -o $OUT/sage8 -q >> $L 2>&1
fi
echo "== done $(date +%T)" >> $L
