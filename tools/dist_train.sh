#!/usr/bin/env bash
# Train on one node with torchrun: tools/dist_train.sh CONFIG NGPUS [train.py args ...]
# NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT (default 29500) configure multi-node runs.
# Without CUDA the processes train on CPU over gloo (tools/train.py switches the backend).
set -euo pipefail

CONFIG=$1
NGPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
PYTHON=${PYTHON:-python}

PYTHONPATH="$(dirname "$0")/..${PYTHONPATH:+:$PYTHONPATH}" \
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --master_port="$MASTER_PORT" \
    --nproc_per_node="$NGPUS" \
    "$(dirname "$0")/train.py" "$CONFIG" --launcher pytorch "${@:3}"
