#!/usr/bin/env bash
# GPU profile of the preflight + pretrain stages; see bench/gpu/profile.py for what it measures.
#
#   OUT=/some/dir bench/gpu/profile.sh              # on a CUDA machine (PYTHON defaults to python3)
#   PYTHON=$(infra/install-stages | tail -1) bench/gpu/profile.sh --cpu-smoke   # CPU test, tiny model
#
# Writes under $OUT (a temp dir when unset): gpu-profile.json, gpu-profile.md, report.json,
# events.jsonl, profile.log. Every stage run has its own timeout and the whole profile a time
# budget (PROFILE_BUDGET_S, default 300 s on GPU); this wrapper kills everything at budget + 40 s.
set -euo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python3}"
export PYTHON
budget="${PROFILE_BUDGET_S:-300}"
for a in "$@"; do [[ "$a" == "--cpu-smoke" ]] && budget="${PROFILE_BUDGET_S:-240}"; done
export PROFILE_BUDGET_S="$budget"
if [[ -z "${OUT:-}" ]]; then
  OUT="$(mktemp -d -t gpu-profile-out-XXXXXX)"
fi
export OUT
mkdir -p "$OUT"
echo "[profile.sh] python: $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')  OUT=$OUT  budget=${budget}s"
rc=0
timeout --signal=TERM --kill-after=10 $((budget + 40)) "$PYTHON" bench/gpu/profile.py "$@" || rc=$?
if [[ $rc -eq 124 || $rc -eq 137 ]]; then
  echo "[profile.sh] profile.py exceeded its hard limit ($((budget + 40)) s); partial results are in $OUT" >&2
fi
ls -la "$OUT"
exit $rc
