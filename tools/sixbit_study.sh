# The 6Bit-Diffusion comparison of the README ("Re-measured on the retrained dq-tiny"), on the CPU:
# calibrate once, fit the dynamic and the static predictor, quantize five checkpoints (TDC lives in the
# checkpoint's recipe, so copies of tiny_6bit.yaml with tdc.enabled false / true), then
# `dq bench --quality` on held-out prompts 1-4 and 5-8 (seeds 0-3 each). About 75 minutes on 2 cores.
#   bash tools/sixbit_study.sh [OUT]          (default out/sixbit_study)
# STUDY=16 instead benches the static mix, dynamic routing and dynamic + TDC on prompts 1-8 and 9-16
# (seeds 0-7 each; about 45 minutes after the ~15-minute calibration), then dynamic + TDC at τ 0.12
# on prompts 1-8: the README's 16-prompt table.
# STUDY=tdc (after a STUDY=16 run in the same folder): dynamic routing with the per-prompt bit target,
# and dynamic + TDC at τ in $TAUS (default "0.13 0.14 0.15"), each with a threshold fitted for its
# own skips (predictor-fit with the TDC recipe) and with the one fitted without TDC, beside static
# W4A4 and the static mix, on prompts 1-8 and 9-16.
set -e
S=${1:-out/sixbit_study}
DQ=${DQ:-.venv/bin/dq}
PY=${PY:-.venv/bin/python}
mkdir -p "$S"
$PY -P - "$S" <<'PY'
import sys, yaml
from dq_cli.recipe import resolve
src = yaml.safe_load(resolve("tiny_6bit.yaml")[1])
# The study's fixed settings (the recipe's own have moved since): τ 0.15, and a threshold that counts
# TDC's skips when TDC is on.
for name, tdc in (("notdc", False), ("tdc", True)):
    yaml.safe_dump({**src, "name": f"tiny_6bit_{name}", "tdc": {**src["tdc"], "enabled": tdc, "tau": 0.15},
                    "predictor": {**src["predictor"], "budget_tdc": True}},
                   open(f"{sys.argv[1]}/{name}.yaml", "w"), sort_keys=False)
PY
sed "s/^  tau: 0.15$/  tau: 0.12/; s/^name: tiny_6bit_tdc$/name: tiny_6bit_tdc_tau012/" "$S/tdc.yaml" > "$S/tdc012.yaml"
held() { grep -v '^#' recipes/prompts/dq-tiny-heldout.txt | grep -v '^$' | sed -n "$1,$2p" > "$S/prompts_$1-$2.txt"; }
held 1 4; held 5 8; held 1 8; held 9 16
if [ "${STUDY:-8}" = tdc ]; then
  $DQ predictor-fit -r "$S/notdc.yaml" -c "$S/cal" -o "$S/pred_pp.json" --plots "$S/plots_pp" -q
  $DQ quantize -r "$S/notdc.yaml" -c "$S/cal" -o "$S/dynamic_pp.safetensors" --predictor "$S/pred_pp.json" -q
  ckpts=(-c "$S/w4a4.safetensors" -c "$S/static.safetensors" -c "$S/dynamic_pp.safetensors")
  for t in ${TAUS:-0.13 0.14 0.15}; do
    n=${t/0./}
    sed "s/^  tau: .*$/  tau: $t/; s/^name: tiny_6bit_tdc$/name: tiny_6bit_tdc_tau$n/" "$S/tdc.yaml" > "$S/tdc_$n.yaml"
    $DQ predictor-fit -r "$S/tdc_$n.yaml" -c "$S/cal" -o "$S/pred_tdc$n.json" --plots "$S/plots_tdc$n" -q
    $DQ quantize -r "$S/tdc_$n.yaml" -c "$S/cal" -o "$S/dynamic_tdc$n.safetensors" --predictor "$S/pred_tdc$n.json" -q
    # The same τ with the threshold fitted without TDC: the INT8 steps forced after skips come on top.
    $DQ quantize -r "$S/tdc_$n.yaml" -c "$S/cal" -o "$S/dyn_pp_tdc$n.safetensors" --predictor "$S/pred_pp.json" -q
    ckpts+=(-c "$S/dynamic_tdc$n.safetensors" -c "$S/dyn_pp_tdc$n.safetensors")
  done
  for part in 1-8 9-16; do
    $DQ bench --quality --prompts "$S/prompts_$part.txt" -n 8 "${ckpts[@]}" -o "$S/q3_$part" -q
  done
  exit 0
fi
$DQ calibrate -r tiny_6bit.yaml -o "$S/cal" -q
$DQ predictor-fit -r "$S/notdc.yaml" -c "$S/cal" -o "$S/pred.json" --plots "$S/plots"
$DQ predictor-fit -r "$S/notdc.yaml" -c "$S/cal" -o "$S/pred_static.json" --static --plots "$S/plots_static"
$DQ quantize -r "$S/notdc.yaml" -c "$S/cal" -o "$S/w4a4.safetensors"
$DQ quantize -r "$S/notdc.yaml" -c "$S/cal" -o "$S/static.safetensors" --predictor "$S/pred_static.json"
$DQ quantize -r "$S/notdc.yaml" -c "$S/cal" -o "$S/dynamic.safetensors" --predictor "$S/pred.json"
$DQ quantize -r "$S/tdc.yaml" -c "$S/cal" -o "$S/dynamic_tdc.safetensors" --predictor "$S/pred.json"
$DQ quantize -r "$S/tdc.yaml" -c "$S/cal" -o "$S/static_tdc.safetensors" --predictor "$S/pred_static.json"
if [ "${STUDY:-8}" = 16 ]; then
  $DQ quantize -r "$S/tdc012.yaml" -c "$S/cal" -o "$S/dynamic_tdc_tau012.safetensors" --predictor "$S/pred.json"
  for part in 1-8 9-16; do
    $DQ bench --quality --prompts "$S/prompts_$part.txt" -n 8 -c "$S/static.safetensors" -c "$S/dynamic.safetensors" \
      -c "$S/dynamic_tdc.safetensors" -o "$S/quality16_$part"
  done
  $DQ bench --quality --prompts "$S/prompts_1-8.txt" -n 8 -c "$S/dynamic_tdc_tau012.safetensors" -o "$S/quality16_tau012_1-8"
  exit 0
fi
for part in 1-4 5-8; do
  $DQ bench --quality --prompts "$S/prompts_$part.txt" -n 4 -c "$S/w4a4.safetensors" -c "$S/static.safetensors" \
    -c "$S/dynamic.safetensors" -c "$S/dynamic_tdc.safetensors" -c "$S/static_tdc.safetensors" -o "$S/quality_$part"
done
