# GPU session (2026-11-30): the text K/V at 4-bit weights with 16-bit activations (dq::w4a16_linear)
# and torch.compile with dq's quantized linears traced into the blocks. Logs and reports in $OUT.
#   PART=quality  the GPU kernel tests, then DeltaQuant W4A4 (int4_row) on dq-tiny with the text K/V
#                 in W8A8 / 4-bit weights (int4_pow2, int4_row, int4), 16 held-out prompts, on the kernels
#   PART=e2e      8 Wan A14B blocks at 480p, BF16 and W4A4, SDPA and sage8, compile off and on; then
#                 the full-size model, BF16 and W4A4 eager with SDPA (speed, peak memory, checkpoint)
source tools/gpu_env.sh || exit 1
L=$OUT/log.txt
{ nvidia-smi --query-gpu=name,driver_version --format=csv; python -c "import torch,triton;print(torch.__version__,triton.__version__)"; } > $L 2>&1
if [ "${PART:-quality}" = quality ]; then
  echo "== gpu tests $(date +%T)" >> $L
  timeout -s KILL 160 python -P -m pytest -m gpu -q tests/test_kernels_w4a4.py ${TESTS:+-k "$TESTS"} >> $L 2>&1
  echo "== compare_methods $(date +%T)" >> $L
  timeout -s KILL ${CMP_S:-400} python -P tools/compare_methods.py --out /tmp/cmp --prompts ${N:-16} --jobs 3 \
      --only ${ONLY:-dq_row dq_row_kv4_pow2 dq_row_kv4_row dq_row_kv4_g64} >> $L 2>&1
  cp /tmp/cmp/quality.md /tmp/cmp/quality.json $OUT/ 2>/dev/null
else
  echo "== 8 blocks compile off,on $(date +%T)" >> $L
  timeout -s KILL 240 python -P -m dq_cli bench e2e --model wan2.2-a14b --resolution 480p --num-layers 8 \
    --configs bf16,w4a4 --attention sdpa,sage8 --compile off,on --steps 10 --warmup-steps 4 --no-breakdown \
    --out $OUT/wan480_8blocks >> $L 2>&1
  echo "== full size bf16,w4a4 sdpa eager $(date +%T)" >> $L
  timeout -s KILL ${FULL_S:-330} python -P -m dq_cli bench e2e --model wan2.2-a14b --resolution 480p --configs bf16,w4a4 \
    --attention sdpa --compile off --steps 10 --warmup-steps 4 --out $OUT/wan480_full >> $L 2>&1
fi
echo "== done $(date +%T)" >> $L
