# GPU session: the W4A4 GEMM epilogues (joined vs split) per linear and over the Wan 480p block.
source tools/gpu_env.sh || exit 1
L=$OUT/log.txt
{ nvidia-smi --query-gpu=name,driver_version --format=csv; python -c "import torch,triton;print(torch.__version__,triton.__version__)"; } > $L 2>&1
for ep in split joined; do
  for rc in "32 4,2,8" "128 4,2,8" "128 4,1,4"; do
    set -- $rc
    echo "== profile $ep rank $1 cube $2 $(date +%T)" >> $L
    timeout -s KILL 60 python -P tools/profile_linear.py --only self_attn.q/k/v/out --no-w8a8 --rank $1 --cube $2 --epilogue $ep >> $L 2>&1
  done
done
echo "== profile split ffn $(date +%T)" >> $L
timeout -s KILL 60 python -P tools/profile_linear.py --only ffn.up --no-w8a8 --rank 128 --cube 4,1,4 --epilogue split >> $L 2>&1
timeout -s KILL 60 python -P tools/profile_linear.py --only ffn.down --no-w8a8 --rank 128 --cube 4,1,4 --epilogue split >> $L 2>&1
mkdir -p $OUT/k
B="import sys, dq_kernels.scaled_gemm as s; s.EPILOGUE = 'split'; from dq_cli.app import app; sys.argv[0]='dq'; app()"
echo "== bench kernels 480p split rank 32 $(date +%T)" >> $L
timeout -s KILL 90 python -P -c "$B" bench kernels --shapes wan-a14b-480p --out $OUT/k/split_r32_480p -q >> $L 2>&1
echo "== bench kernels 480p split rank 128 cube 4,1,4 $(date +%T)" >> $L
timeout -s KILL 90 python -P -c "$B" bench kernels --shapes wan-a14b-480p --rank 128 --cube 4,1,4 --out $OUT/k/split_r128_414_480p -q >> $L 2>&1
echo "== bench kernels 720p split rank 32 $(date +%T)" >> $L
timeout -s KILL 90 python -P -c "$B" bench kernels --shapes wan-a14b-720p --out $OUT/k/split_r32_720p -q >> $L 2>&1
cat $OUT/k/*.md > $OUT/kernels.md 2>/dev/null; tar cf $OUT/kernels_json.tar -C $OUT/k . && rm -rf $OUT/k
echo "== done $(date +%T)" >> $L
