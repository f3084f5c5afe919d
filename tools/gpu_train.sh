# GPU session: one dq-tiny training session on every GPU of the machine (data-parallel, torchrun),
# resuming from a carried runs/dq-tiny or starting from the shipped weights; the state comes back in
# $OUT (5 files, none over 16 MiB). With EVAL=1 the EMA weights are then exported into the package
# (here, on the device) and measured: held-out and seen-caption adherence in BF16, the README strip
# (eval.tar), and the export itself (weights.tar).
#   run: MIN=8 STEPS=10000 EVAL=0 bash tools/gpu_train.sh      carry: [".whl", "runs/dq-tiny"]
source tools/gpu_env.sh || exit 1
export PYTHONSAFEPATH=1  # torchrun's processes: keep the repo root (its kernels/) off sys.path
GPUS=$(nvidia-smi -L | wc -l)
MIN=${MIN:-8}
STEPS=${STEPS:-10000}
L=$OUT/train.log
{ nvidia-smi --query-gpu=name,driver_version --format=csv; python -c "import torch;print(torch.__version__)"; } > $L 2>&1
timeout -s KILL $(python -c "print(int($MIN * 60 + 100))") python -P -m torch.distributed.run --standalone --nproc-per-node $GPUS \
  -m dq_cli.tiny.train --state runs/dq-tiny --minutes $MIN --total-steps $STEPS --init dq_cli/tiny/weights >> $L 2>&1
echo "== training exit $? $(date +%T)" >> $L
cp runs/dq-tiny/{raw,ema,adam}.safetensors runs/dq-tiny/meta.json runs/dq-tiny/loss.tsv $OUT/
[ "$EVAL" = 1 ] || exit 0
python -P -m dq_cli.tiny.train --state runs/dq-tiny --export dq_cli/tiny/weights >> $L 2>&1
mkdir -p /tmp/eval
timeout -s KILL 150 python -P -m dq_cli bench --quality --prompts recipes/prompts/dq-tiny-heldout.txt -n 48 \
  --device cuda -o /tmp/eval/bf16_heldout >> $L 2>&1
timeout -s KILL 60 python -P -m dq_cli bench --quality --prompts recipes/prompts/dq-tiny.txt -n 12 \
  --device cuda -o /tmp/eval/bf16_seen >> $L 2>&1
timeout -s KILL 60 python -P tools/strip.py --device cuda --out /tmp/eval/dq-tiny-strip.png >> $L 2>&1
echo "== eval done $(date +%T)" >> $L
tar cf $OUT/eval.tar -C /tmp/eval . && tar cf $OUT/weights.tar -C dq_cli/tiny weights
