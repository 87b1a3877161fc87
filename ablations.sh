#!/usr/bin/env bash
# Ablation grid and seeds as DVC experiments, then the tables reports/ablations.{md,csv} and reports/seeds.{md,csv}.
#
#   ./ablations.sh            queue the grid, run it (JOBS at a time), wait, write the tables
#   ./ablations.sh --table    only (re)write the tables from `dvc exp show` (BASE=<commit>: the grid's
#                             baseline commit, if HEAD has moved since it was queued)
#
# Grid: one change at a time from the committed defaults, each a named experiment that re-runs the whole DAG
# from what its params change (so every row has the token probe of the `lime` stage too):
#   seed-1, seed-2       phases 1, 2A and 2B (and slices_ft, which follows phase 2B's seed) with another seed;
#                        with the commit itself (seed 42) they make reports/seeds.{md,csv}
#   findings-off         the paper's phase 1 (InfoNCE only; its flip off, as side cannot follow the text there)
#   inflation-sum/-center (the default is mean), seq-pool, perceiver (the model card's compressor), no-corpus
#   (stand-in SigLIP without its corpus), then flip-off (2A/2B) and lora-r4, then issue 31's levers:
#   corpus-findings-off (no corpus rows in phase 1), side-refit-off, candidates-8 (findings decoding's k),
#   phase1-epochs-12 (the default before the side detector), cell-weight (per-token lesion targets),
#   bilateral-weight-3 (phase 1's draws) and guide-head (findings decoding held to the token head, not the
#   side detector)
# Each experiment runs in a temporary copy of the repository (.dvc/tmp/exps); MLflow runs still land in this
# repository's mlflow.db, tagged with the experiment's name. Experiments that already exist (by name) are not
# queued again, so the script can be re-run after an interruption. JOBS (default 1) experiments run at once;
# on 2 cores JOBS=2 BRAIN3D_THREADS=1 finishes sooner than one 2-thread experiment at a time.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/dvc ] || { echo "ablations.sh: run ./setup.sh first" >&2; exit 1; }
. .venv/bin/activate

# the table lists the experiments of the commit they were queued on (HEAD when queued; BASE=<commit> to override)
base=${BASE:-$(git rev-parse HEAD)}
if [ "${1:-}" != "--table" ]; then
  existing=$(dvc exp list --name-only 2>/dev/null || true)  # finished experiments of HEAD
  existing+=$'\n'$(dvc queue status 2>/dev/null | awk '$NF == "Queued" || $NF == "Running" {print $2}' || true)
  queue() {  # queue NAME OVERRIDE...
    local name=$1; shift
    if grep -qx -- "$name" <<<"$existing"; then
      echo "ablations.sh: $name exists, not queued again"
      return
    fi
    local args=()
    for override in "$@"; do args+=(-S "$override"); done
    dvc exp run --queue -n "$name" "${args[@]}"
  }
  for seed in 1 2; do
    queue "seed-$seed" "phase1.seed=$seed" "phase2a.seed=$seed" "phase2b.seed=$seed"
  done
  queue findings-off phase1.findings_weight=0 phase1.laterality_flip=false generate.select=plain
  queue inflation-sum model.inflation=sum
  queue inflation-center model.inflation=center
  queue seq-pool model.compressor=seq_pool
  queue perceiver model.compressor=perceiver
  queue no-corpus profiles.demo.corpus.n_subjects=0
  queue flip-off phase2a.laterality_flip=false phase2b.laterality_flip=false
  queue lora-r4 phase2b.lora_rank=4
  queue corpus-findings-off phase1.corpus_findings=false
  queue side-refit-off phase1.side_refit_epochs=0
  queue candidates-8 generate.candidates=8
  queue phase1-epochs-12 profiles.demo.phase1.epochs=12
  queue cell-weight phase1.cell_weight=0.3
  queue bilateral-weight-3 phase1.bilateral_weight=3
  queue guide-head generate.guide=head
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
