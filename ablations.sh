#!/usr/bin/env bash
# Ablation grid as DVC experiments, then the table reports/ablations.{md,csv}.
#
#   ./ablations.sh            queue the grid, run it one experiment at a time, wait, write the table
#   ./ablations.sh --table    only (re)write the table from `dvc exp show` (BASE=<commit>: the grid's
#                             baseline commit, if HEAD has moved since it was queued)
#
# Grid (8 experiments): phase2b.lora_rank {4, 16} x model.compressor {seq_pool, grid_pool} x laterality
# flip {off, on}, where the flip sets phase2a.laterality_flip and phase2b.laterality_flip together; then
# findings-grounded phase 1 (phase1.findings_weight=1, phase 1 flip off / on) on the committed params.
# Each experiment re-runs only what its params change (compressor: phase1 onward; flip: phase2a onward;
# rank: phase2b onward) in a temporary copy of the repository (.dvc/tmp/exps); MLflow runs still land in
# this repository's mlflow.db, tagged with the experiment's name. The grid reproduces up to `evaluate`
# (its table is what the ablation reads); LIME stays the baseline commit's (`dvc exp run` without a target
# runs it too). Experiments that already exist (by name) are not queued again, so the script can be re-run
# after an interruption. `-j 1`: the stages already
# use every core; on a bigger machine raise JOBS (JOBS=2 ./ablations.sh).
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/dvc ] || { echo "ablations.sh: run ./setup.sh first" >&2; exit 1; }
. .venv/bin/activate

# the table lists the experiments of the commit they were queued on (HEAD when queued; BASE=<commit> to override)
base=${BASE:-$(git rev-parse HEAD)}
if [ "${1:-}" != "--table" ]; then
  existing=$(dvc exp list --name-only 2>/dev/null || true)  # finished experiments of HEAD
  existing+=$'\n'$(dvc queue status 2>/dev/null | awk '$NF == "Queued" || $NF == "Running" {print $2}' || true)
  for rank in 16 4; do
    for compressor in seq_pool grid_pool; do
      for flip in false true; do
        name="r${rank}-${compressor//_/-}-flip-$([ "$flip" = true ] && echo on || echo off)"
        if grep -qx -- "$name" <<<"$existing"; then
          echo "ablations.sh: $name exists, not queued again"
          continue
        fi
        dvc exp run --queue -n "$name" -S "phase2b.lora_rank=$rank" -S "model.compressor=$compressor" \
          -S "phase2a.laterality_flip=$flip" -S "phase2b.laterality_flip=$flip" evaluate
      done
    done
  done
  for flip in false true; do  # findings-grounded phase 1 (re-runs phase1 onward)
    name="p1-findings-flip-$([ "$flip" = true ] && echo on || echo off)"
    if grep -qx -- "$name" <<<"$existing"; then
      echo "ablations.sh: $name exists, not queued again"
      continue
    fi
    dvc exp run --queue -n "$name" -S "phase1.findings_weight=1.0" -S "phase1.laterality_flip=$flip" evaluate
  done
  dvc queue start -j "${JOBS:-1}"  # returns at once; the workers run in the background
  # (the status is captured before grep: `grep -q` exiting early would fail the pipe under pipefail)
  while status=$(dvc queue status) && grep -Eq '(Queued|Running)[[:space:]]*$' <<<"$status"; do
    sleep 30
  done
  dvc queue status
  if grep -Eq 'Failed[[:space:]]*$' <<<"$(dvc queue status)"; then
    echo "ablations.sh: some experiments failed; see \`dvc queue logs <name>\`" >&2
  fi
fi

python -m stages.ablations --rev "$base"
