#!/usr/bin/env bash
# Sharded evaluation on NNODES x NPUS_PER_NODE processes (the seed's eval_multi_npus.sh): every
# rank scores its share of the slices, rank 0 writes metrics.csv/metrics.json and prints the
# totals. Run on node 0; arguments go to `medsam eval`. See docs/DISTRIBUTED.md.
#
#   NNODES=1 NPUS_PER_NODE=8 scripts/eval_multi.sh --data-path data/npy/CT_Abd_test \
#       --checkpoint models/medsam_vit_b.pth --work-dir eval_out
set -euo pipefail
source "$(dirname "$0")/mpi_launch.sh"
medsam_multi_launch eval "$@"
