# One GPU session of kernel measurements (tools/ probes + `dq bench kernels` + the GPU tests); logs in $OUT.
source tools/gpu_env.sh || exit 1
L=$OUT/log.txt
{ nvidia-smi --query-gpu=name,driver_version --format=csv; python -c "import torch,triton;print(torch.__version__,triton.__version__)"; } > $L 2>&1
echo "== probe" >> $L
timeout -s KILL 80 python -P tools/kernel_probe.py --m 32760 --k 5120 --n 5120 >> $L 2>&1
mkdir -p $OUT/k
echo "== bench kernels 480p one-hot core $(date +%T)" >> $L
timeout -s KILL 70 python -P -c "import sys, dq_kernels.scaled_gemm as s; s.CORE_SELECT = False; from dq_cli.app import app; sys.argv[0]='dq'; app()" bench kernels --shapes wan-a14b-480p --out $OUT/k/onehot_wan-a14b-480p -q >> $L 2>&1
for s in wan-a14b-480p ltx-video cogvideox-5b wan-ti2v-5b wan-a14b-720p; do
  echo "== bench kernels $s $(date +%T)" >> $L
  timeout -s KILL 70 python -P -m dq_cli bench kernels --shapes $s --out $OUT/k/kernels_$s -q >> $L 2>&1
done
cat $OUT/k/*.md > $OUT/kernels.md 2>/dev/null; tar cf $OUT/kernels_json.tar -C $OUT/k . && rm -rf $OUT/k
echo "== gpu tests $(date +%T)" >> $L
timeout -s KILL 100 python -P -m pytest -m gpu -q tests/test_kernels_w4a4.py tests/test_attention.py >> $L 2>&1
echo "== done $(date +%T)" >> $L
