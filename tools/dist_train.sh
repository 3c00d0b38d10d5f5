#!/usr/bin/env bash
# Distributed training with torchrun (mmseg 1.x conventions).
#   tools/dist_train.sh CONFIG GPUS [train.py args]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, PORT from the environment.
# Without CUDA the GPUS processes run on CPU with the gloo backend.
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

if [ -z "$CONFIG" ] || [ -z "$GPUS" ]; then
    echo "usage: $0 CONFIG GPUS [tools/train.py arguments]" >&2
    exit 2
fi

PYTHONPATH="$(dirname $0)/..":$PYTHONPATH \
python -m torch.distributed.run \
    --nnodes=$NNODES \
    --node_rank=$NODE_RANK \
    --master_addr=$MASTER_ADDR \
    --nproc_per_node="$GPUS" \
    --master_port=$PORT \
    $(dirname "$0")/train.py \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
