# GPU session: the 8-bit attention kernel's variants at Wan 2.2 shapes, then the GPU tests (logs in $OUT).
source tools/gpu_env.sh || exit 1
L=$OUT/log.txt
{ nvidia-smi --query-gpu=name,driver_version --format=csv; python -c "import torch,triton;print(torch.__version__,triton.__version__)"; } > $L 2>&1
echo "== attention variants wan480 $(date +%T)" >> $L
timeout -s KILL 200 python -P tools/bench_attention.py --shapes wan480 --no-peer --out $OUT/attention-variants-480 \
  --variants default,pv-acc0,pv-acc2,poly-exp,pv-acc0+poly,pv-acc0+pipelined,pv-acc0+poly+pipelined,pv-pipelined,poly+pv-pipelined >> $L 2>&1
echo "== attention variants wan720 $(date +%T)" >> $L
timeout -s KILL 100 python -P tools/bench_attention.py --shapes wan720 --no-peer --out $OUT/attention-variants-720 \
  --variants default,pv-acc0,pv-pipelined,pv-acc0+poly >> $L 2>&1
echo "== gpu tests attention $(date +%T)" >> $L
timeout -s KILL 150 python -P -m pytest -m gpu -q -x tests/test_attention.py >> $L 2>&1
echo "== gpu tests kernels $(date +%T)" >> $L
timeout -s KILL 100 python -P -m pytest -m gpu -q tests/test_kernels_w4a4.py >> $L 2>&1
echo "== done $(date +%T)" >> $L
