# GPU session: the Wan 2.2 recipe's W4A4 in int4_row on the H100/H200 — `dq bench kernels` at the
# recipe's own settings (rank 128; 4×1×4 cubes for the first 30% of steps, 4×2×8 after), then the
# full-size end-to-end bench (BF16 and W4A4, SDPA and sage8, eager). Logs and reports in $OUT.
source tools/gpu_env.sh || exit 1
L=$OUT/log.txt
{ nvidia-smi --query-gpu=name,driver_version --format=csv; python -c "import torch,triton;print(torch.__version__,triton.__version__)"; } > $L 2>&1
for cube in 4,1,4 4,2,8; do
  echo "== bench kernels rank 128 cube $cube $(date +%T)" >> $L
  timeout -s KILL 100 python -P -m dq_cli bench kernels --shapes wan-a14b-480p --w4a4-format int4_row --rank 128 \
    --cube $cube --out $OUT/kernels_r128_${cube//,/} -q >> $L 2>&1
done
echo "== full size bf16,w4a4 x sdpa,sage8 eager $(date +%T)" >> $L
timeout -s KILL ${FULL_S:-360} python -P -m dq_cli bench e2e --model wan2.2-a14b --resolution 480p --configs bf16,w4a4 \
  --attention sdpa,sage8 --compile off --steps 1 --warmup-steps 1 --out $OUT/wan480_full >> $L 2>&1
echo "== done $(date +%T)" >> $L
