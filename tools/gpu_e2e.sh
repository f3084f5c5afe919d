# GPU session: end-to-end Wan 2.2 A14B 480p — dq's configurations against BF16 and torchao (logs in $OUT).
source tools/gpu_env.sh || exit 1
L=$OUT/log.txt
{ nvidia-smi --query-gpu=name,driver_version --format=csv; python -c "import torch,triton,torchao;print(torch.__version__,triton.__version__,torchao.__version__)"; } > $L 2>&1
echo "== full size bf16,w4a4 x sdpa,sage8 eager $(date +%T)" >> $L
timeout -s KILL ${FULL_S:-330} python -P -m dq_cli bench e2e --model wan2.2-a14b --resolution 480p --configs bf16,w4a4 \
  --attention sdpa,sage8 --compile off --steps 1 --warmup-steps 1 --out $OUT/wan480_full >> $L 2>&1
echo "== 8 blocks, every configuration, eager and compiled $(date +%T)" >> $L
timeout -s KILL ${SMALL_S:-230} python -P -m dq_cli bench e2e --model wan2.2-a14b --resolution 480p --num-layers 8 \
  --configs bf16,w4a4,6bit,w8a8,torchao-fp8,torchao-int8 --attention sdpa,sage8 --compile off,on --steps 1 \
  --warmup-steps 1 --no-breakdown --out $OUT/wan480_8l >> $L 2>&1
echo "== done $(date +%T)" >> $L
