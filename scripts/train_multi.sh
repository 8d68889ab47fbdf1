#!/usr/bin/env bash
# Data-parallel training on NNODES x NPUS_PER_NODE processes (the seed's train_multi_npus.sh).
# Run on node 0; arguments go to `medsam train`. See docs/DISTRIBUTED.md.
#
#   NNODES=1 NPUS_PER_NODE=8 scripts/train_multi.sh --tr-npy-path data/npy/CT_Abd \
#       --checkpoint models/sam_vit_b_01ec64.pth --work-dir work_dir --batch-size 8 --num-epochs 100
#   NNODES=2 NPUS_PER_NODE=8 MASTER_ADDR=node0 HOSTS=node0,node1 scripts/train_multi.sh ...
set -euo pipefail
source "$(dirname "$0")/mpi_launch.sh"
medsam_multi_launch train "$@"
