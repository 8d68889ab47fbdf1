# Shared by train_multi.sh and eval_multi.sh (sourced, not run): maps the seed's launch variables
# onto one `mpirun` (or `srun`) that starts every rank of `medsam <subcommand>`.
#
#   NNODES         nodes                                   -> -np NNODES*NPUS_PER_NODE, host list
#   NODE_RANK      this node's index                       -> only node 0 launches (mpirun starts
#                                                             the ranks on the other nodes itself)
#   NPUS_PER_NODE  processes per node                      -> --map-by ppr:NPUS_PER_NODE:node
#   MASTER_ADDR    node 0's address                        -> first host, so it gets rank 0
#   MASTER_PORT    rendezvous port                         -> start of the TCP port range MPI uses
#                                                             between nodes (btl_tcp_port_min_v4)
#
# Extra knobs: HOSTS (comma-separated node names/addresses, MASTER_ADDR first) or HOSTFILE
# (an OpenMPI hostfile), MEDSAM (the binary, default target/release/medsam, built with
# --features mpi), LAUNCHER=srun (inside a Slurm allocation), MPIRUN_ARGS (appended to mpirun's
# options), DRY_RUN=1 (print the command instead of running it).

medsam_multi_launch() {
  local sub="$1"; shift
  local nnodes="${NNODES:-1}" node_rank="${NODE_RANK:-0}" per_node="${NPUS_PER_NODE:-8}"
  local master="${MASTER_ADDR:-localhost}" port="${MASTER_PORT:-6789}"
  local bin="${MEDSAM:-target/release/medsam}"
  local np=$((nnodes * per_node))
  local -a cmd

  if [ "$node_rank" != 0 ] && [ "${LAUNCHER:-mpirun}" = mpirun ]; then
    echo "NODE_RANK=$node_rank: nothing to do here; mpirun on node 0 ($master) starts this node's $per_node ranks over ssh." >&2
    return 0
  fi

  if [ "${LAUNCHER:-mpirun}" = srun ]; then
    # Slurm starts the ranks itself (PMI/PMIx); nodes and tasks come from the allocation.
    cmd=(srun --nodes="$nnodes" --ntasks="$np" --ntasks-per-node="$per_node" --kill-on-bad-exit=1
         --mpi="${SRUN_MPI:-pmix}" "$bin" "$sub" "$@")
  else
    cmd=(mpirun -np "$np" --map-by "ppr:${per_node}:node" --bind-to "${BIND_TO:-none}")
    if [ -n "${HOSTFILE:-}" ]; then
      cmd+=(--hostfile "$HOSTFILE")
    elif [ "$nnodes" -gt 1 ]; then
      if [ -z "${HOSTS:-}" ]; then
        echo "NNODES=$nnodes needs HOSTS=host0,host1,... (MASTER_ADDR first) or HOSTFILE=file" >&2
        return 2
      fi
      local -a hosts
      IFS=, read -r -a hosts <<< "$HOSTS"
      if [ "${#hosts[@]}" -ne "$nnodes" ]; then
        echo "HOSTS lists ${#hosts[@]} hosts but NNODES=$nnodes" >&2
        return 2
      fi
      if [ "${hosts[0]}" != "$master" ]; then
        echo "warning: first host ${hosts[0]} is not MASTER_ADDR=$master; rank 0 (checkpoints, logs) runs on ${hosts[0]}" >&2
      fi
      local list="" h
      for h in "${hosts[@]}"; do list+="${list:+,}$h:$per_node"; done
      cmd+=(--host "$list" --mca btl_tcp_port_min_v4 "$port" --mca btl_tcp_port_range_v4 100 --mca oob_tcp_dynamic_ipv4_ports "$((port + 100))-$((port + 199))")
    else
      cmd+=(--host "localhost:$per_node")
    fi
    # Forward what the ranks need from this environment to every node.
    local v
    for v in PATH LD_LIBRARY_PATH RAYON_NUM_THREADS RUST_BACKTRACE ASCEND_HOME_PATH ASCEND_OPP_PATH; do
      if [ -n "${!v:-}" ]; then cmd+=(-x "$v"); fi
    done
    # shellcheck disable=SC2206
    cmd+=(${MPIRUN_ARGS:-} "$bin" "$sub" "$@")
    if [ "$(id -u)" = 0 ]; then
      export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    fi
  fi

  if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "${cmd[@]}"; echo
    return 0
  fi
  "${cmd[@]}"
}
