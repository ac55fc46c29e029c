#!/usr/bin/env bash
# A local lpd stack on loopback: lpd-scheduler (SQLite job store in
# STACK_DIR/state) and N `lpd-worker serve` processes, from a build folder.
# Prints the scheduler's address, then waits; Ctrl-C or SIGTERM stops the
# workers (each checkpoints and hands back its running task), then the
# scheduler. If one of them exits by itself, the others are stopped too and
# the script fails.
#
#   deploy/local/run-stack.sh [options] [STACK_DIR]     (default /tmp/lpd/stack)
#     --build-dir DIR      where the binaries are (default $LPD_BUILD_DIR, else build)
#     --workers N          number of workers (default 2)
#     --device D           the workers' --device: cpu (default), cuda, cuda:N, auto
#     --threads N          CPU threads per worker (default: cores / workers)
#     --port N             scheduler port on 127.0.0.1 (default 0: a free one)
#     --address-file FILE  write host:port there once the scheduler answers
#     --fresh              delete STACK_DIR/state first (forget every job)
#
# Then, from another shell:
#   export LPD_SERVER=<printed address>
#   build/client/lpdctl submit deploy/examples/tiny-cpu.yaml --watch
# Logs: STACK_DIR/logs/scheduler.log, STACK_DIR/logs/worker-N.log.
set -euo pipefail

usage() { sed -n '2,22s/^# \{0,1\}//p' "$0"; }

build_dir=${LPD_BUILD_DIR:-build}
workers=2
device=cpu
threads=""
port=0
address_file=""
fresh=0
stack_dir=""
while (($#)); do
  case "$1" in
    --build-dir) build_dir=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --address-file) address_file=$2; shift 2 ;;
    --fresh) fresh=1; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "run-stack.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) stack_dir=$1; shift ;;
  esac
done
stack_dir=${stack_dir:-/tmp/lpd/stack}
if ! [[ $workers =~ ^[0-9]+$ && $port =~ ^[0-9]+$ ]]; then
  echo "run-stack.sh: --workers and --port take numbers" >&2
  exit 2
fi
if [ -z "$threads" ]; then
  threads=$(($(nproc) / (workers > 0 ? workers : 1)))
  ((threads >= 1)) || threads=1
fi

scheduler_bin=$build_dir/server/lpd-scheduler
worker_bin=$build_dir/worker/lpd-worker
lpdctl_bin=$build_dir/client/lpdctl
for bin in "$scheduler_bin" "$worker_bin"; do
  if [ ! -x "$bin" ]; then
    echo "run-stack.sh: $bin not found; build it first:" >&2
    echo "  cmake --build $build_dir --target lpd-scheduler lpd-worker lpdctl" >&2
    exit 1
  fi
done

((fresh)) && rm -rf "$stack_dir/state"
mkdir -p "$stack_dir/state" "$stack_dir/logs"
port_file=$stack_dir/port
rm -f "$port_file"
[ -n "$address_file" ] && rm -f "$address_file"

scheduler_pid=""
worker_pids=()

# (SC2317: shellcheck does not see calls from traps.)
# shellcheck disable=SC2317
# Sends SIGTERM to each pid given, then waits up to $1 seconds for all of
# them to exit; SIGKILL for those still there.
stop_pids() {
  local timeout=$1 pid deadline
  shift
  (($#)) || return 0
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  deadline=$((SECONDS + timeout))
  for pid in "$@"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "run-stack.sh: pid $pid still running after ${timeout}s; SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
}

# Workers first (they report their running task back to the scheduler),
# then the scheduler.
stopping=0
# shellcheck disable=SC2317
stop_all() {
  ((stopping)) && return 0
  stopping=1
  echo "run-stack.sh: stopping ${#worker_pids[@]} worker(s) and the scheduler" >&2
  stop_pids "${LPD_STOP_TIMEOUT:-60}" "${worker_pids[@]}"
  [ -n "$scheduler_pid" ] && stop_pids 30 "$scheduler_pid"
  [ -n "$address_file" ] && rm -f "$address_file"
  echo "run-stack.sh: stopped" >&2
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all' EXIT

# Each process in its own session (setsid; it does not fork here, so $! is
# the process): a Ctrl-C in the terminal reaches only this script, which
# sends each process one SIGTERM (a second signal would make it quit at once).
setsid "$scheduler_bin" --listen "127.0.0.1:$port" --state-dir "$stack_dir/state" \
  --port-file "$port_file" >"$stack_dir/logs/scheduler.log" 2>&1 &
scheduler_pid=$!

# The scheduler writes the port it bound once it serves; then a call must
# go through (lpdctl list), within a deadline.
deadline=$((SECONDS + 60))
until [ -s "$port_file" ]; do
  if ! kill -0 "$scheduler_pid" 2>/dev/null; then
    echo "run-stack.sh: lpd-scheduler exited; its log:" >&2
    cat "$stack_dir/logs/scheduler.log" >&2
    exit 1
  fi
  if ((SECONDS >= deadline)); then
    echo "run-stack.sh: lpd-scheduler did not start within 60s" >&2
    exit 1
  fi
  sleep 0.1
done
address=127.0.0.1:$(<"$port_file")
if [ -x "$lpdctl_bin" ]; then
  until "$lpdctl_bin" list --server "$address" --timeout-seconds 2 >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "run-stack.sh: lpd-scheduler at $address does not answer" >&2
      exit 1
    fi
    sleep 0.2
  done
fi

for ((i = 1; i <= workers; i++)); do
  setsid "$worker_bin" serve --scheduler "$address" --device "$device" \
    --threads "$threads" --name "local-worker-$i" \
    >"$stack_dir/logs/worker-$i.log" 2>&1 &
  worker_pids+=($!)
done

if [ -n "$address_file" ]; then
  echo "$address" >"$address_file.tmp"
  mv "$address_file.tmp" "$address_file"
fi
cat <<EOF
lpd stack: scheduler at $address (pid $scheduler_pid), $workers worker(s) --device $device --threads $threads (pids ${worker_pids[*]:-none})
  state: $stack_dir/state    logs: $stack_dir/logs/
  export LPD_SERVER=$address
  $lpdctl_bin submit deploy/examples/tiny-cpu.yaml --watch
Ctrl-C or SIGTERM stops them all.
EOF

# Until a signal, or until one of them exits by itself.
set +e
wait -n "$scheduler_pid" "${worker_pids[@]}"
status=$?
set -e
echo "run-stack.sh: a process of the stack exited by itself (status $status); see $stack_dir/logs/" >&2
exit 1
