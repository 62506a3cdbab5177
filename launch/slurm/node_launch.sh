#!/bin/bash
# One `accelerate launch` on this node; it starts one training process per GPU of the node.
# Run by train_multinode.sbatch through `srun` (one task per node). Every argument goes to
# launch/train.py (e.g. --config configs/imnet100_vit.yaml --set stage2.steps=2000).
#
# Inputs (the sbatch exports them; tests/parallel sets them by hand on one machine):
#   SLURM_NNODES            number of nodes
#   SLURM_NODEID            this node's rank (falls back to SLURM_PROCID: one task per node)
#   MAIN_PROCESS_IP/PORT    rendezvous: the first node of the allocation
#   GPUS_PER_NODE           processes per node
#   ACCELERATE_CONFIG       default configs/accelerate/multinode_deepspeed.yaml
#   DERD_DRY_RUN=1          print the command instead of running it
set -euo pipefail
cd "$(dirname "$0")/../.."

NNODES=${SLURM_NNODES:?SLURM_NNODES not set}
NODE_RANK=${SLURM_NODEID:-${SLURM_PROCID:?neither SLURM_NODEID nor SLURM_PROCID set}}
GPUS_PER_NODE=${GPUS_PER_NODE:?GPUS_PER_NODE not set}
CONFIG=${ACCELERATE_CONFIG:-configs/accelerate/multinode_deepspeed.yaml}
WORLD=$((NNODES * GPUS_PER_NODE))

cmd=(accelerate launch --config_file "$CONFIG"
     --num_machines "$NNODES" --num_processes "$WORLD" --machine_rank "$NODE_RANK"
     --main_process_ip "${MAIN_PROCESS_IP:?MAIN_PROCESS_IP not set}" --main_process_port "${MAIN_PROCESS_PORT:-29500}"
     launch/train.py "$@"
     # Every process checks the world it joined: a node that started too few processes stops the run.
     --set "distributed.expected_world_size=$WORLD")

if [ "${DERD_DRY_RUN:-0}" = 1 ]; then
    echo "${cmd[@]}"
    exit 0
fi
echo "node $NODE_RANK/$NNODES on $(hostname): ${cmd[*]}" >&2
exec "${cmd[@]}"
