#!/usr/bin/env bash
# Train a csnln-lite: CSNLN x4 with 32 features and 4 self-exemplar mining iterations, on the
# official recipe (L1 loss, Adam at 1e-4, 16 LR patches of 48x48 a step), the configuration
# of the bundled no-reference model (models/registry.toml, issue 18).
#
#   examples/train_csnln_lite.sh RUN_DIR PHOTO_DIR... [-- MORE TTSR TRAIN OPTIONS]
#   TIME_LIMIT=8m examples/train_csnln_lite.sh runs/csnln-lite BSD68/ Sun80/
#
# Running it again goes on from RUN_DIR's newest checkpoint, so a GPU lent for a few minutes
# at a time, or a CPU that is switched off at night, gets there in pieces. Environment:
# STEPS (total, default 3000), DECAY (halve the rate every DECAY steps, default 1000),
# TIME_LIMIT (end this piece after so long, with a checkpoint: 90s, 8m, 2h), DEVICE (auto),
# WORKERS (data-loading processes, default 4), TTSR (the command, default ttsr).
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

if [ $# -lt 2 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
    usage
    exit 2
fi
run="$1"
shift
data=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do
    data+=(--data "$1")
    shift
done
[ $# -gt 0 ] && shift  # the --
limit=()
if [ -n "${TIME_LIMIT:-}" ]; then
    limit=(--time-limit "$TIME_LIMIT")
fi

# --resume starts afresh when RUN_DIR has no checkpoint yet.
# shellcheck disable=SC2086  # TTSR may be a command with arguments (python -m ttsr_cli)
${TTSR:-ttsr} train --arch csnln --config lite --scale 4 "${data[@]}" --out "$run" --resume \
    --steps "${STEPS:-3000}" --lr-decay-steps "${DECAY:-1000}" --checkpoint-every 250 \
    --device "${DEVICE:-auto}" --workers "${WORKERS:-4}" "${limit[@]}" "$@"
