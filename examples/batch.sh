#!/usr/bin/env bash
# Upscale a small batch made from scikit-image's bundled sample photos, each paired with a
# sharper reference of the same scene, and print the JSON report.
#
#   examples/batch.sh [--weights TTSR.pt] [WORKDIR]
#   TTSR_WEIGHTS=TTSR.pt examples/batch.sh [WORKDIR]
#
# Without weights the bundled model is used; any checkpoint ttsr reads may be given instead
# (an original TTSR.pt / TTSR-rec.pt or a ttsr .safetensors).  WORKDIR defaults to a new
# temporary folder.
set -euo pipefail

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }

weights="${TTSR_WEIGHTS:-}"
workdir=""
while [ $# -gt 0 ]; do
    case "$1" in
        --weights) weights="${2:?--weights needs a path}"; shift 2 ;;
        --weights=*) weights="${1#*=}"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) workdir="$1"; shift ;;
    esac
done
workdir="${workdir:-$(mktemp -d)}"
weights_args=()
if [ -n "$weights" ]; then
    weights_args=(--weights "$weights")
fi

# lr/NAME.png: a 256x256 crop of a sample, bicubic down x4 (64x64).
# refs/NAME.png: an overlapping, shifted 256x256 crop at full resolution (the sharp reference).
python3 - "$workdir" <<'PY'
import sys
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

root = Path(sys.argv[1])
(root / "lr").mkdir(parents=True, exist_ok=True)
(root / "refs").mkdir(parents=True, exist_ok=True)
for name in ("astronaut", "coffee", "chelsea"):
    photo = getattr(skimage.data, name)()
    crop = Image.fromarray(photo[:256, :256])
    crop.resize((64, 64), Image.BICUBIC).save(root / "lr" / f"{name}.png")
    Image.fromarray(np.ascontiguousarray(photo[40:296, 60:316])).save(root / "refs" / f"{name}.png")
PY

ttsr upscale "$workdir/lr" --ref-dir "$workdir/refs" "${weights_args[@]}" \
    -o "$workdir/sr" --json
echo "outputs in $workdir/sr" >&2
