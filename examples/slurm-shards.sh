#!/bin/bash
# A nightly detaudit run spread over 4 Slurm array tasks, one shard each, then merged.
#
# Submit from the repository root (configs/ and the shards/ directory must be on a
# filesystem every node sees), and chain the merge on the whole array:
#
#   JOBID=$(sbatch --parsable examples/slurm-shards.sh)
#   sbatch --dependency=afterok:$JOBID --job-name=detaudit-merge --wrap "detaudit merge shards/* --out runs"
#
# afterok merges only when every shard exited 0; a shard exits 1 when one of its cells
# breaks an expectation, so use --dependency=afterany:$JOBID to merge (and look at) those too.
#
#SBATCH --job-name=detaudit-shard
#SBATCH --array=1-4
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=16G
#SBATCH --time=01:00:00
#SBATCH --output=detaudit-shard-%A_%a.out
# On a GPU partition add, e.g.:  #SBATCH --gres=gpu:1  and install ".[gpu]" instead of ".[cpu]".

set -euo pipefail

# Your environment with detaudit installed (pip install ".[cpu]").
# source /path/to/venv/bin/activate

mkdir -p shards
# Shard I of N runs every N-th cell in cell-id order: the same split on every node.
detaudit run configs/nightly.yaml \
    --shard "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}" \
    --out shards \
    --run-id "shard-${SLURM_ARRAY_TASK_ID}" \
    --workers "${SLURM_CPUS_PER_TASK:-1}"
