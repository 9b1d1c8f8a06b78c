#!/usr/bin/env bash
# GPU check of the QLoRA route: SFT in 4-bit, then do the answers end at the tuned format's end-of-turn token?
# See bench/gpu/qlora_eot.py for what it does and checks.
#
#   PYTHON=$(infra/install-stages | tail -1) bench/gpu/qlora-eot.sh               # on a CUDA machine
#   PYTHON=$(infra/install-stages | tail -1) bench/gpu/qlora-eot.sh --cpu-smoke   # tests the script, no GPU
#
# Writes under $OUT (a temp dir when unset): qlora-eot.json (the verdict), base/ (the tiny model),
# sft-<route>/ (each stage run: params, events, stderr.log, outputs). The verdict is also the last stdout line.
# Exit status: 0 PASS, 1 FAIL, 2 ERROR, 77 SKIPPED (no CUDA device), 124 over the time limit (QLORA_EOT_LIMIT_S).
set -euo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python3}"
if [[ -z "${OUT:-}" ]]; then
  OUT="$(mktemp -d -t qlora-eot-XXXXXX)"
fi
export OUT
mkdir -p "$OUT"
limit="${QLORA_EOT_LIMIT_S:-900}"
rc=0
timeout --signal=TERM --kill-after=10 "$limit" "$PYTHON" bench/gpu/qlora_eot.py "$@" || rc=$?
case $rc in
  0) echo "[qlora-eot.sh] PASS; details in $OUT/qlora-eot.json" >&2 ;;
  1) echo "[qlora-eot.sh] FAIL; details in $OUT/qlora-eot.json" >&2 ;;
  77) echo "[qlora-eot.sh] no CUDA device: skipped" >&2 ;;
  124|137) echo "[qlora-eot.sh] over the ${limit} s limit; partial results in $OUT" >&2 ;;
  *) echo "[qlora-eot.sh] ERROR (exit $rc); see $OUT" >&2 ;;
esac
exit $rc
