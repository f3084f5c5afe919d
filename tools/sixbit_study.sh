# The 6Bit-Diffusion comparison of the README ("Re-measured on the retrained dq-tiny"), on the CPU:
# calibrate once, fit the dynamic and the static predictor, quantize five checkpoints (TDC lives in the
# checkpoint's recipe, so copies of tiny_6bit.yaml with tdc.enabled false / true), then
# `dq bench --quality` on held-out prompts 1-4 and 5-8 (seeds 0-3 each). About 75 minutes on 2 cores.
#   bash tools/sixbit_study.sh [OUT]          (default out/sixbit_study)
# STUDY=16 instead benches the static mix, dynamic routing and dynamic + TDC on prompts 1-8 and 9-16
# (seeds 0-7 each; about 45 minutes after the ~15-minute calibration), then dynamic + TDC at τ 0.12
# on prompts 1-8: the README's 16-prompt table.
set -e
S=${1:-out/sixbit_study}
DQ=${DQ:-.venv/bin/dq}
PY=${PY:-.venv/bin/python}
mkdir -p "$S"
$PY -P - "$S" <<'PY'
import sys, yaml
from dq_cli.recipe import resolve
src = yaml.safe_load(resolve("tiny_6bit.yaml")[1])
for name, tdc in (("notdc", False), ("tdc", True)):
    yaml.safe_dump({**src, "name": f"tiny_6bit_{name}", "tdc": {**src["tdc"], "enabled": tdc}},
                   open(f"{sys.argv[1]}/{name}.yaml", "w"), sort_keys=False)
PY
sed "s/^  tau: 0.15$/  tau: 0.12/; s/^name: tiny_6bit_tdc$/name: tiny_6bit_tdc_tau012/" "$S/tdc.yaml" > "$S/tdc012.yaml"
held() { grep -v '^#' recipes/prompts/dq-tiny-heldout.txt | grep -v '^$' | sed -n "$1,$2p" > "$S/prompts_$1-$2.txt"; }
held 1 4; held 5 8; held 1 8; held 9 16
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
