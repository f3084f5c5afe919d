# The W4A4 path's GPU runs (`run` from the project root, .whl and .dq_commit carried after
# `bash tools/stamp_commit.sh`, so the reports name the commit): one PART per call, logs and
# reports in $OUT. Sixth session (2026-11-30): DeltaQuant's core tokens on an exact BF16 GEMM
# (power-of-two FP8 scales) instead of the grouped FP8 GEMM.
#   PART=kernels  the GPU kernel tests, tools/probe_core_gemm.py, `dq bench kernels` at Wan A14B 480p,
#                 rank 128, in both of the recipe's cube sizes
#   PART=quality  tools/profile_linear.py at rank 128 and 4x1x4 cubes; dq-tiny 16 held-out prompts with the Wan recipe's settings (compare_methods
#                 dq_row_kv4_g64); then 8 Wan A14B blocks at 480p, BF16 and W4A4 × SDPA and sage8 ×
#                 compile off and on
#   PART=after    the GPU kernel and attention tests, `dq bench kernels` as above, then the 8 Wan blocks
#                 as above (after the BF16 weight expansion and the sage8 compile fix)
#   PART=graphs   the GPU attention tests, then the 8 Wan blocks compiled with --compile-mode reduce-overhead
# Seventh session (the GEMM's low-rank input in fp32, the weight scale of the core term in its epilogue):
#   PART=epilogue the GPU kernel tests, tools/probe_epilogue_parts.py, `dq bench kernels` as above
#   PART=blocks   tools/profile_linear.py as in PART=quality, then the 8 Wan blocks, compile off and on
#   PART=full     the GPU kernel tests, `dq bench kernels` as above, then the full-size Wan A14B at 480p (both
#                 experts, BF16 and W4A4 × SDPA and sage8, eager, 2 measured steps)
#   PART=quantizer tools/probe_quantizer.py (the int4_row quantizer's step width and warps), then
#                 `dq bench kernels` as above (eighth session: the probe alone)
# Eighth session (int4_row steps of ~2,048 elements; 8-bit attention restores V's rounding-error mean):
#   PART=steps    the GPU kernel tests, `dq bench kernels` as above, tools/attention_error.py on dq-tiny and
#                 the dq-tiny 16-prompt quality of 8-bit attention against SDPA
#   PART=fused    `dq bench kernels` with the self-attention Q/K/V fused into one 5,120→15,360 linear beside
#                 the unfused block, both cube sizes (what fusing would gain; not built into the models)
#   PART=fullcompile the full-size Wan A14B at 480p (both experts), BF16 and W4A4 × SDPA and sage8 × compile
#                 off and on, 2 measured steps after the default warm-up (as many steps: the recipe's second
#                 cube size first appears at step 2; a 1-step warm-up left its Triton compile and second
#                 inductor graph inside the measured run — first try, forward medians only), no breakdown
# Ninth session:
#   PART=models   the other models at full size, random weights: TI2V-5B 720p, CogVideoX-5B 480p, LTX-Video 512p;
#                 BF16, W4A4, W8A8 and torchao FP8 × SDPA and sage8, eager, 2 measured steps, with the breakdown
# Tenth session:
#   PART=wan720   the full-size Wan A14B at 720p (both experts), BF16, W4A4 and W8A8 × SDPA and sage8, eager, one
#                 measured step after a one-step warm-up (step 0: the high-noise expert, 4x1x4 cubes), no breakdown
#   PART=modelscompile  TI2V-5B and CogVideoX-5B (MODELS=...), BF16 and W4A4 × SDPA and sage8, compiled, as above
#               (STEPS=2 for ltx-video, whose scheduler needs two)
# Eleventh session:
#   PART=ltxgraphs  the full-size LTX-Video, BF16 and W4A4 × SDPA and sage8, compiled into CUDA graphs
#               (--compile-mode reduce-overhead), 4 measured steps after 4 of warm-up
#   PART=fusedqkv  the full-size Wan A14B at 480p, eager, SDPA: BF16, W4A4 and W4A4 with Q/K/V fused (the
#               Wan recipe plus `quantization.fuse_qkv: true`), one step after a one-step warm-up
#   PART=sixbitfull  the full-size Wan A14B at 480p (both experts), eager, SDPA: BF16, 6bit and W4A4;
#               TDC=off: BF16 and 6bit with the Temporal Delta Cache off (a copy of the recipe)
#   PART=carriers  the NVFP4 kernels written without a GPU (one-pass carriers, Blackwell GEMM): their GPU
#               tests, tools/probe_carriers.py, then 8 Wan blocks with 6bit on torch's carriers and on the Triton ones (DQ_TRITON_CARRIERS=1)
# Thirteenth session:
#   PART=tdcstats  6Bit's block statistics in one pass (dq_kernels.residual_l1): its GPU tests and
#               tools/probe_residual_l1.py, then PART=sixbitfull's run
#   PART=gemmtma   scaled_gemm's K loop on TMA descriptors: the GPU kernel tests, then `dq bench kernels`
#               at Wan A14B 480p (rank 128, 4x2x8 cubes) with DQ_GEMM_TMA=0 (pointer loads) and 1
#   PART=gemmtiles  tools/probe_gemm_tiles.py: every candidate tile of scaled_gemm, TMA (one program a tile
#               and persistent, DQ_GEMM_PERSISTENT) and pointer loads,
#               W4A4 (rank 128, int4_row, 4x2x8 cubes) and W8A8, at Wan A14B 480p's 5,120² (SHAPES= to add
#               "5120,13824 13824,5120"); written for the fourteenth session, not yet run
#   PART=tmae2e   with TMA loads (the default): `dq bench kernels` at 720p as above, then the full-size Wan
#               A14B at 480p, BF16, W4A4 and W8A8, eager, SDPA, 2 steps after one of warm-up
# Fourteenth session:
#   PART=int8quant the W8A8 route's INT8 quantizer reading each row once: its GPU tests,
#               tools/probe_int8_quantizer.py, `dq bench kernels` at Wan A14B 480p (rank 128, 4x2x8 cubes),
#               then the full-size Wan A14B at 480p, eager, SDPA: BF16, W8A8 and 6bit (whose carrier GEMM's
#               operand comes from the same quantizer), 2 steps after one of warm-up
#   PART=verify   tools/probe_int8_quantizer.py (the two-pass quantizer's step width and warps), `dq bench
#               kernels` at LTX-Video's shapes, then the
#               full-size Wan A14B at 480p as in PART=int8quant (W8A8 now the wan22_w8a8 recipe's SmoothQuant)
#   PART=w8a8compiled  the GPU test of `dq bench e2e` (2 blocks an expert at full width; ~5 minutes, more than
#               PART=verify's first run gave it, which also had tests/test_scale_out.py: 2 GPUs), then the
#               full-size Wan A14B at 480p compiled, BF16 and W8A8 (wan22_w8a8) × SDPA and sage8
# Sixteenth session:
#   PART=followup  what the fifteenth session changed without a GPU: the reference path compiled by inductor
#               under dq's exact casts on CUDA (tests/test_kernels_w4a4.py -k reference_path), every built-in
#               recipe through the CLI (tests/test_builtin_recipes.py, now with cogvideox_w8a8), then the
#               full-size CogVideoX-5B at 480p, BF16 and W8A8 (the cogvideox_w8a8 recipe) × SDPA and sage8
#               × compile off and on, 2 steps after the default warm-up, no breakdown
#   PART=fulltable  the gpu-bench workflow's Wan A14B 480p table, CONFIGS=... per call (two calls: the 10-minute
#               limit), breakdown on, as the workflow runs it
#   PART=w8a8traced  (seventeenth session; ran at 48aa465, the switch removed since: it was slower) the full-size
#               Wan A14B at 480p compiled, BF16, torchao FP8 and W8A8 × SDPA and sage8 with the Triton INT8
#               quantizer, then W8A8 alone with DQ_W8A8_QUANTIZER=traced (torch ops inductor may fuse)
#   PART=sixbitcompiled  6Bit-Diffusion compiled (its routed linears eager between the compiled pieces): the
#               full-size Wan A14B at 480p (both experts), BF16 and 6bit, SDPA, eager and compiled, then
#               both with sage8 compiled, 2 steps after the default warm-up, no breakdown
#   PART=calibcuda  (eighteenth session) the seventeenth session's calibration changes (shared statistics for
#               layers that read one tensor, artifact format 2, the in-place reservoir sort) on CUDA: the API,
#               built-in recipe and calibration tests, then dq-tiny calibrated and quantized on the GPU
#               (peak host memory from /usr/bin/time where the machine has it)
#   PART=gemmocc  tools/probe_gemm_tiles.py --tiles occupancy (tiles for two CTAs an SM) beside the current
#               tiles, TMA loads, at 5,120->5,120, 13,824->5,120 and 5,120->13,824 (SHAPES="K,N ..." to choose)
#   PART=w8a8occ  (ran at 10b1405, with two 128x128x128 tiles for two CTAs an SM in scaled_gemm's autotune list;
#               removed after it, no gain beyond the runs' spread) the GPU kernel tests, `dq bench kernels`
#               at Wan A14B 480p and 720p (rank 128, 4x2x8), then the full-size Wan A14B 480p, BF16 and W8A8 x
#               SDPA and sage8, compiled, 2 steps
#   PART=regression  the whole GPU suite (`pytest -m gpu tests/`, the ~4-minute full-width e2e test left out), then
#               the API, built-in recipe and calibration tests, which take CUDA where it is present
# Nineteenth session:
#   PART=embed4  the full-size Wan A14B 480p, BF16 against W4A4 with (w4a4, the recipe now) and without
#               (w4a4-recipe) the time / text embedders (condition_embedder.time_proj and text_embedder) at 4-bit
#               weights (W4A16): the weights' bytes on the GPU against issue #6's 30% of BF16; SDPA, eager, 1 step.
#               (It ran at d3eb9f9, before the recipe took them, with the two W4A4 rows the other way round.)
#   PART=embed4quality  their cost on dq-tiny: compare_methods dq_row_kv4_g64 (the Wan recipe's settings) against
#               dq_row_kv4_g64_embed4, 16 held-out prompts
#   PART=embed4ti2v  the W4A16 GPU tests (now with a one-row 2-D input), then TI2V-5B at full size, where
#               time_proj runs on every token (Wan 2.2's per-token timesteps): BF16, W4A4 with the embedders at 4
#               bits (the recipe now) and without (w4a4-recipe), eager, SDPA, 2 steps after 2 of warm-up (both cube
#               stages tuned before the measurement: with 1, the first config paid for the second stage's autotuning)
source tools/gpu_env.sh || exit 1
L=$OUT/log.txt
{ nvidia-smi --query-gpu=name,driver_version --format=csv; python -c "import torch,triton;print(torch.__version__,triton.__version__)"; } > $L 2>&1
recipe_before_embed4() {  # wan22_w4a4.yaml as it was before its embedders went to 4 bits (2026-12-01)
  grep -v 'condition_embedder\.' recipes/wan22_w4a4.yaml > $OUT/wan22_w4a4_before_embed4.yaml
}
bench_kernels() {  # one Wan A14B block's linears at 480p, rank 128, in both of the recipe's cube sizes
  for c in 4,1,4 4,2,8; do
    echo "== bench kernels cube $c $(date +%T)" >> $L
    timeout -s KILL 100 python -P -m dq_cli bench kernels --shapes wan-a14b-480p --w4a4-format int4_row --rank 128 \
      --cube $c --out $OUT/kernels_r128_${c//,/} -q >> $L 2>&1
  done
}
gpu_tests() {  # the W4A4 kernel tests on the GPU; $1: time limit in seconds
  echo "== gpu tests $(date +%T)" >> $L
  timeout -s KILL $1 python -P -m pytest -m gpu -q tests/test_kernels_w4a4.py >> $L 2>&1
}
profile() {  # tools/profile_linear.py at the Wan recipe's early-step settings
  echo "== profile $(date +%T)" >> $L
  timeout -s KILL 90 python -P tools/profile_linear.py --shapes wan-a14b-480p --rank 128 --cube 4,1,4 --no-w8a8 >> $L 2>&1
}
eight_blocks() {  # 8 Wan A14B blocks at 480p; the arguments choose the compile rows
  echo "== 8 blocks $* $(date +%T)" >> $L
  timeout -s KILL 280 python -P -m dq_cli bench e2e --model wan2.2-a14b --resolution 480p --num-layers 8 \
    --configs bf16,w4a4 --attention sdpa,sage8 "$@" --steps 10 --warmup-steps 4 --no-breakdown \
    --out $OUT/wan480_8blocks >> $L 2>&1
}
case "${PART:-kernels}" in
kernels)
  gpu_tests 170
  echo "== probe $(date +%T)" >> $L
  timeout -s KILL 150 python -P tools/probe_core_gemm.py >> $L 2>&1
  bench_kernels ;;
quality)
  profile
  echo "== compare_methods $(date +%T)" >> $L
  timeout -s KILL 260 python -P tools/compare_methods.py --out /tmp/cmp --prompts 16 --jobs 3 --only dq_row_kv4_g64 >> $L 2>&1
  cp /tmp/cmp/quality.md /tmp/cmp/quality.json $OUT/ 2>/dev/null
  eight_blocks --compile off,on ;;
after)
  echo "== gpu tests $(date +%T)" >> $L
  timeout -s KILL 150 python -P -m pytest -m gpu -q tests/test_kernels_w4a4.py tests/test_attention.py -k "not opcheck" >> $L 2>&1
  bench_kernels
  eight_blocks --compile off,on ;;
epilogue)
  gpu_tests 170
  echo "== probe epilogue parts $(date +%T)" >> $L
  timeout -s KILL 150 python -P tools/probe_epilogue_parts.py >> $L 2>&1
  bench_kernels ;;
blocks)
  profile
  eight_blocks --compile off,on ;;
full)
  gpu_tests 130
  bench_kernels
  echo "== full size $(date +%T)" >> $L
  timeout -s KILL 330 python -P -m dq_cli bench e2e --model wan2.2-a14b --resolution 480p --configs bf16,w4a4 \
    --attention sdpa,sage8 --steps 2 --warmup-steps 1 --out $OUT/wan480_full >> $L 2>&1 ;;
quantizer)
  echo "== probe quantizer $(date +%T)" >> $L
  timeout -s KILL 200 python -P tools/probe_quantizer.py >> $L 2>&1
  bench_kernels ;;
fullcompile)
  echo "== full size, compile off and on $(date +%T)" >> $L
  timeout -s KILL 540 python -P -m dq_cli bench e2e --model wan2.2-a14b --resolution 480p --configs bf16,w4a4 \
    --attention sdpa,sage8 --compile off,on --steps 2 --no-breakdown --out $OUT/wan480_full >> $L 2>&1 ;;
models)
  for m in wan2.2-ti2v-5b cogvideox-5b ltx-video; do
    echo "== full size $m $(date +%T)" >> $L
    timeout -s KILL ${LIMIT:-170} python -P -m dq_cli bench e2e --model $m --configs bf16,w4a4,w8a8,torchao-fp8 \
      --attention sdpa,sage8 --steps 2 --out $OUT/$m >> $L 2>&1
  done ;;
wan720)
  echo "== full size 720p $(date +%T)" >> $L
  timeout -s KILL ${LIMIT:-520} python -P -m dq_cli bench e2e --model wan2.2-a14b --resolution 720p \
    --configs bf16,w4a4,w8a8 --attention sdpa,sage8 --steps 1 --warmup-steps 1 --no-breakdown \
    --out $OUT/wan720_full >> $L 2>&1 ;;
modelscompile)
  for m in ${MODELS:-wan2.2-ti2v-5b cogvideox-5b}; do
    echo "== full size compiled $m $(date +%T)" >> $L
    timeout -s KILL ${LIMIT:-270} python -P -m dq_cli bench e2e --model $m --configs bf16,w4a4 \
      --attention sdpa,sage8 --compile on --steps ${STEPS:-1} --warmup-steps 1 --no-breakdown --out $OUT/${m}_compiled >> $L 2>&1
  done ;;
fused)
  for c in 4,2,8 4,1,4; do
    echo "== bench kernels, fused q/k/v beside unfused, cube $c $(date +%T)" >> $L
    timeout -s KILL 120 python -P -m dq_cli bench kernels --shapes wan-a14b-480p --shapes wan-a14b-480p-fused-qkv \
      --w4a4-format int4_row --rank 128 --cube $c --out $OUT/kernels_fused_${c//,/} -q >> $L 2>&1
  done ;;
steps)
  gpu_tests 170
  bench_kernels
  echo "== attention error dq-tiny $(date +%T)" >> $L
  timeout -s KILL 90 python -P tools/attention_error.py --device cuda --out $OUT/attn_error.json >> $L 2>&1
  echo "== quality sage8 $(date +%T)" >> $L
  timeout -s KILL 200 python -P -m dq_cli bench --quality -n 16 --attention sage8 --device cuda --out $OUT/quality_sage8 >> $L 2>&1 ;;
graphs)
  echo "== attention gpu tests $(date +%T)" >> $L
  timeout -s KILL 200 python -P -m pytest -m gpu -q tests/test_attention.py >> $L 2>&1
  eight_blocks --compile on --compile-mode reduce-overhead ;;
fusedqkv)
  echo "== full size 480p, fused q/k/v $(date +%T)" >> $L
  sed 's/^quantization:/quantization:\n  fuse_qkv: true/' recipes/wan22_w4a4.yaml > $OUT/wan22_w4a4_fused.yaml
  timeout -s KILL ${LIMIT:-270} python -P -m dq_cli bench e2e --model wan2.2-a14b --resolution 480p \
    --configs bf16,w4a4,w4a4-recipe --recipe w4a4-recipe=$OUT/wan22_w4a4_fused.yaml --attention sdpa --steps 1 \
    --warmup-steps 1 --no-breakdown --out $OUT/wan480_fused >> $L 2>&1 ;;
carriers)
  echo "== gpu tests nvfp4 $(date +%T)" >> $L
  timeout -s KILL 150 python -P -m pytest -m gpu -q tests/test_carrier_path.py tests/test_carrier_gemm.py tests/test_formats_nvfp4.py \
    tests/test_nvfp4_gemm.py tests/test_kernels_w4a4.py -k "not test_kernels_w4a4 or scaled_gemm" >> $L 2>&1
  echo "== probe carriers $(date +%T)" >> $L
  timeout -s KILL 120 python -P tools/probe_carriers.py >> $L 2>&1
  for c in 0 1; do
    echo "== 8 blocks 6bit, DQ_TRITON_CARRIERS=$c $(date +%T)" >> $L
    DQ_TRITON_CARRIERS=$c timeout -s KILL 170 python -P -m dq_cli bench e2e --model wan2.2-a14b --resolution 480p \
      --num-layers 8 --configs bf16,6bit --attention sdpa --steps 2 --warmup-steps 2 --no-breakdown \
      --out $OUT/wan480_8blocks_6bit_carriers$c >> $L 2>&1
  done ;;
int8quant)
  echo "== gpu tests int8 $(date +%T)" >> $L
  timeout -s KILL 100 python -P -m pytest -m gpu -q tests/test_kernels_w4a4.py -k "int8 or w8a8" >> $L 2>&1
  echo "== probe int8 quantizer $(date +%T)" >> $L
  timeout -s KILL 60 python -P tools/probe_int8_quantizer.py >> $L 2>&1
  echo "== bench kernels $(date +%T)" >> $L
  timeout -s KILL 100 python -P -m dq_cli bench kernels --shapes wan-a14b-480p --w4a4-format int4_row --rank 128 \
    --cube 4,2,8 --out $OUT/kernels_480p -q >> $L 2>&1
  echo "== full size bf16, w8a8, 6bit $(date +%T)" >> $L
  timeout -s KILL ${LIMIT:-300} python -P -m dq_cli bench e2e --model wan2.2-a14b --resolution 480p \
    --configs bf16,w8a8,6bit --attention sdpa --steps 2 --warmup-steps 1 --out $OUT/wan480_full_int8q >> $L 2>&1 ;;
verify)
  echo "== probe int8 quantizer $(date +%T)" >> $L
  timeout -s KILL 60 python -P tools/probe_int8_quantizer.py >> $L 2>&1
  echo "== bench kernels ltx $(date +%T)" >> $L
  timeout -s KILL 60 python -P -m dq_cli bench kernels --shapes ltx-video --w4a4-format int4_row --rank 64 \
    --out $OUT/kernels_ltx -q >> $L 2>&1
  echo "== full size bf16, w8a8, 6bit $(date +%T)" >> $L
  timeout -s KILL ${LIMIT:-240} python -P -m dq_cli bench e2e --model wan2.2-a14b --resolution 480p \
    --configs bf16,w8a8,6bit --attention sdpa --steps 2 --warmup-steps 1 --no-breakdown --out $OUT/wan480_full >> $L 2>&1 ;;
w8a8compiled)
  echo "== gpu test bench e2e $(date +%T)" >> $L
  timeout -s KILL ${LIMIT:-330} python -P -m pytest -m gpu -q tests/test_bench_e2e.py >> $L 2>&1
  echo "== full size compiled bf16, w8a8 $(date +%T)" >> $L
  timeout -s KILL 250 python -P -m dq_cli bench e2e --model wan2.2-a14b --resolution 480p --configs bf16,w8a8 \
    --attention sdpa,sage8 --compile on --steps 2 --warmup-steps 1 --no-breakdown --out $OUT/wan480_full_w8a8_compiled >> $L 2>&1 ;;
gemmtiles)
  for kn in ${SHAPES:-5120,5120}; do
    echo "== gemm tiles K,N=$kn $(date +%T)" >> $L
    timeout -s KILL ${LIMIT:-250} python -P tools/probe_gemm_tiles.py --k ${kn%,*} --n ${kn#*,} >> $L 2>&1
  done ;;
tmae2e)
  echo "== bench kernels 720p $(date +%T)" >> $L
  timeout -s KILL 150 python -P -m dq_cli bench kernels --shapes wan-a14b-720p --w4a4-format int4_row --rank 128 \
    --cube 4,2,8 --out $OUT/kernels_720p -q >> $L 2>&1
  echo "== full size bf16, w4a4, w8a8 $(date +%T)" >> $L
  timeout -s KILL ${LIMIT:-300} python -P -m dq_cli bench e2e --model wan2.2-a14b --resolution 480p \
    --configs bf16,w4a4,w8a8 --attention sdpa --steps 2 --warmup-steps 1 --out $OUT/wan480_full_tma >> $L 2>&1 ;;
gemmtma)
  gpu_tests 200
  for t in 0 1; do
    echo "== bench kernels DQ_GEMM_TMA=$t $(date +%T)" >> $L
    DQ_GEMM_TMA=$t timeout -s KILL ${LIMIT:-150} python -P -m dq_cli bench kernels --shapes wan-a14b-480p \
      --w4a4-format int4_row --rank 128 --cube 4,2,8 --out $OUT/kernels_tma$t -q >> $L 2>&1
  done ;;
tdcstats)
  echo "== gpu tests residual_l1 $(date +%T)" >> $L
  timeout -s KILL 100 python -P -m pytest -m gpu -q tests/test_residual_l1.py >> $L 2>&1
  echo "== probe residual_l1 $(date +%T)" >> $L
  timeout -s KILL 60 python -P tools/probe_residual_l1.py >> $L 2>&1 ;&
sixbitfull)
  echo "== full size 6bit, TDC ${TDC:-on} $(date +%T)" >> $L
  if [ "${TDC:-on}" = off ]; then
    sed 's/^  enabled: true/  enabled: false/' recipes/wan22_6bit.yaml > /tmp/wan22_6bit_notdc.yaml
    timeout -s KILL ${LIMIT:-480} python -P -m dq_cli bench e2e --model wan2.2-a14b --resolution 480p \
      --configs bf16,6bit --recipe 6bit=/tmp/wan22_6bit_notdc.yaml --attention sdpa --steps 2 --warmup-steps 1 \
      --no-breakdown --out $OUT/wan480_full_6bit_notdc >> $L 2>&1
  else
    timeout -s KILL ${LIMIT:-480} python -P -m dq_cli bench e2e --model wan2.2-a14b --resolution 480p \
      --configs bf16,6bit,w4a4 --attention sdpa --steps 2 --warmup-steps 1 --out $OUT/wan480_full_6bit >> $L 2>&1
  fi ;;
followup)
  echo "== gpu tests: reference path compiled, built-in recipes $(date +%T)" >> $L
  timeout -s KILL 60 python -P -m pytest -m gpu -q tests/test_kernels_w4a4.py -k reference_path >> $L 2>&1
  timeout -s KILL 220 python -P -m pytest -q tests/test_builtin_recipes.py >> $L 2>&1  # not gpu-marked: CUDA when present
  echo "== full size cogvideox-5b, w8a8 recipe $(date +%T)" >> $L
  timeout -s KILL ${LIMIT:-300} python -P -m dq_cli bench e2e --model cogvideox-5b --configs bf16,w8a8 \
    --attention sdpa,sage8 --compile off,on --steps 2 --no-breakdown --out $OUT/cogvideox_w8a8_full >> $L 2>&1 ;;
fulltable)  # the CI workflow's table (.github/workflows/gpu-bench.yml) in two calls: CONFIGS=bf16,w4a4,w8a8, then
           # CONFIGS=6bit,torchao-fp8,torchao-int8; `dq bench merge` joins them (and fills the second's × BF16)
  echo "== full size Wan A14B 480p, ${CONFIGS} $(date +%T)" >> $L
  timeout -s KILL ${LIMIT:-560} python -P -m dq_cli bench e2e --model wan2.2-a14b --resolution 480p \
    --configs ${CONFIGS} --attention sdpa,sage8 --compile off,on --steps 2 --device cuda \
    -o $OUT/wan480_table_${CONFIGS//,/_} >> $L 2>&1 ;;
w8a8traced)
  # bf16 and torchao's FP8 once, beside the default quantizer; the traced one alone; merged into one table
  echo "== full size Wan A14B 480p compiled, bf16, torchao-fp8, W8A8 (Triton quantizer) $(date +%T)" >> $L
  timeout -s KILL 330 python -P -m dq_cli bench e2e --model wan2.2-a14b --resolution 480p \
    --configs bf16,w8a8,torchao-fp8 --attention sdpa,sage8 --compile on --steps 2 --no-breakdown \
    -o $OUT/wan480_w8a8_quantizer_triton >> $L 2>&1
  echo "== full size Wan A14B 480p compiled, W8A8 (DQ_W8A8_QUANTIZER=traced) $(date +%T)" >> $L
  DQ_W8A8_QUANTIZER=traced timeout -s KILL 170 python -P -m dq_cli bench e2e --model wan2.2-a14b --resolution 480p \
    --configs w8a8 --attention sdpa,sage8 --compile on --steps 2 --no-breakdown \
    -o $OUT/wan480_w8a8_quantizer_traced >> $L 2>&1 ;;
sixbitcompiled)
  echo "== full size Wan A14B 480p, bf16 and 6bit, SDPA, eager and compiled $(date +%T)" >> $L
  timeout -s KILL 400 python -P -m dq_cli bench e2e --model wan2.2-a14b --resolution 480p --configs bf16,6bit \
    --attention sdpa --compile off,on --steps 2 --no-breakdown -o $OUT/wan480_6bit_compiled >> $L 2>&1
  echo "== the same with sage8, compiled $(date +%T)" >> $L
  timeout -s KILL 150 python -P -m dq_cli bench e2e --model wan2.2-a14b --resolution 480p --configs bf16,6bit \
    --attention sage8 --compile on --steps 2 --no-breakdown -o $OUT/wan480_6bit_compiled_sage8 >> $L 2>&1 ;;
gemmocc)
  for shape in ${SHAPES:-5120,5120 13824,5120 5120,13824}; do
    echo "== occupancy tiles at K,N = $shape $(date +%T)" >> $L
    timeout -s KILL 150 python -P tools/probe_gemm_tiles.py --k ${shape%,*} --n ${shape#*,} --tiles occupancy \
      --modes "TMA,TMA persistent" >> $L 2>&1
    echo "== the current tiles at K,N = $shape, TMA $(date +%T)" >> $L
    timeout -s KILL 100 python -P tools/probe_gemm_tiles.py --k ${shape%,*} --n ${shape#*,} --modes TMA >> $L 2>&1
  done ;;
w8a8occ)
  gpu_tests 120
  for res in 480p 720p; do
    echo "== bench kernels $res $(date +%T)" >> $L
    timeout -s KILL 100 python -P -m dq_cli bench kernels --shapes wan-a14b-$res --w4a4-format int4_row --rank 128 \
      --cube 4,2,8 --out $OUT/kernels_occupancy_$res -q >> $L 2>&1
  done
  echo "== full size Wan A14B 480p compiled, bf16 and w8a8 $(date +%T)" >> $L
  timeout -s KILL 300 python -P -m dq_cli bench e2e --model wan2.2-a14b --resolution 480p --configs bf16,w8a8 \
    --attention sdpa,sage8 --compile on --steps 2 --no-breakdown -o $OUT/wan480_w8a8_occupancy >> $L 2>&1 ;;
embed4)
  echo "commit ${DQ_GIT_COMMIT:-unknown}" >> $L
  recipe_before_embed4
  echo "== full size 480p, the embedders at 4-bit weights $(date +%T)" >> $L
  timeout -s KILL ${LIMIT:-420} python -P -m dq_cli bench e2e --model wan2.2-a14b --resolution 480p \
    --configs bf16,w4a4,w4a4-recipe --recipe w4a4-recipe=$OUT/wan22_w4a4_before_embed4.yaml --attention sdpa \
    --steps 1 --warmup-steps 1 --no-breakdown --out $OUT/wan480_embed4 >> $L 2>&1 ;;
embed4quality)
  echo "commit ${DQ_GIT_COMMIT:-unknown}" >> $L
  echo "== dq-tiny quality, the embedders at 4-bit weights $(date +%T)" >> $L
  timeout -s KILL ${LIMIT:-400} python -P tools/compare_methods.py --out $OUT/compare_embed4 --only dq_row_kv4_g64 \
    dq_row_kv4_g64_embed4 --prompts 16 --jobs 2 >> $L 2>&1 ;;
embed4ti2v)
  echo "commit ${DQ_GIT_COMMIT:-unknown}" >> $L
  echo "== W4A16 gpu tests $(date +%T)" >> $L
  timeout -s KILL 120 python -P -m pytest -m gpu -q tests/test_kernels_w4a4.py -k w4a16 >> $L 2>&1
  recipe_before_embed4
  echo "== TI2V-5B full size $(date +%T)" >> $L
  timeout -s KILL ${LIMIT:-300} python -P -m dq_cli bench e2e --model wan2.2-ti2v-5b --configs bf16,w4a4,w4a4-recipe \
    --recipe w4a4-recipe=$OUT/wan22_w4a4_before_embed4.yaml --attention sdpa --steps 2 --warmup-steps 2 \
    --out $OUT/ti2v_embed4 >> $L 2>&1 ;;
regression)
  echo "commit ${DQ_GIT_COMMIT:-unknown}" >> $L
  echo "== pytest -m gpu (all but the full-width e2e test) $(date +%T)" >> $L
  timeout -s KILL 420 python -P -m pytest -m gpu -q tests/ --deselect tests/test_bench_e2e.py::test_e2e_on_the_gpu >> $L 2>&1
  echo "== test_api, test_builtin_recipes, test_calibration $(date +%T)" >> $L
  timeout -s KILL 150 python -P -m pytest -q tests/test_api.py tests/test_builtin_recipes.py tests/test_calibration.py >> $L 2>&1 ;;
calibcuda)
  python -c "import safetensors; print('safetensors', safetensors.__version__)" >> $L 2>&1
  echo "== test_api, test_builtin_recipes, test_calibration (CUDA where they pick the default device) $(date +%T)" >> $L
  timeout -s KILL 330 python -P -m pytest -q tests/test_api.py tests/test_builtin_recipes.py tests/test_calibration.py >> $L 2>&1
  TIME=$(command -v /usr/bin/time >/dev/null && echo "/usr/bin/time -v")
  echo "== dq-tiny: calibrate and quantize on CUDA $(date +%T)" >> $L
  $TIME timeout -s KILL 120 python -P -m dq_cli calibrate -r tiny_deltaquant.yaml -n 2 --device cuda \
    -o $OUT/tiny_deltaquant-calib >> $L 2>&1
  timeout -s KILL 120 python -P -m dq_cli quantize -r tiny_deltaquant.yaml -c $OUT/tiny_deltaquant-calib \
    --device cuda -o $OUT/tiny_deltaquant.safetensors >> $L 2>&1
  ls -l $OUT >> $L ;;
ltxgraphs)
  echo "== full size ltx-video, CUDA graphs $(date +%T)" >> $L
  timeout -s KILL ${LIMIT:-400} python -P -m dq_cli bench e2e --model ltx-video --configs bf16,w4a4 \
    --attention sdpa,sage8 --compile on --compile-mode reduce-overhead --steps 4 --warmup-steps 4 --no-breakdown \
    --out $OUT/ltx-video_graphs >> $L 2>&1 ;;
esac
echo "== done $(date +%T)" >> $L
