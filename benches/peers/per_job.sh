#!/usr/bin/env bash
# What the daemon does per CLI-submitted `true` job: N submits, P at a
# time (one CLI call each), counted with `perf stat` on the daemon's
# process (system calls by tracepoint, context switches, task-clock),
# divided by N. Counts move far less than rates on a shared VM, so two
# builds are best compared by alternating this script between them and
# taking medians (BENCHMARKS.md §24). Needs `perf` with tracepoints.
#
#   cargo build --release && benches/peers/per_job.sh [N] [P] [path/to/opsd]
set -euo pipefail
N=${1:-600}
P=${2:-4}
here="$(cd "$(dirname "$0")" && pwd)"
OPSD=${3:-$here/../../target/release/opsd}
[ -x "$OPSD" ] || { echo "build opsd first: cargo build --release" >&2; exit 1; }
command -v perf >/dev/null 2>&1 || { echo "perf is needed (Debian: linux-perf)" >&2; exit 1; }
. "$here/daemon.sh" per-job
events=syscalls:sys_enter_fdatasync,syscalls:sys_enter_pwrite64,syscalls:sys_enter_futex,syscalls:sys_enter_fcntl,context-switches,task-clock
perf stat -e "$events" -p "$daemon" -o "$st/perf.txt" &
counter=$!
sleep 0.2
t0=$(date +%s.%N)
seq "$N" | xargs -P "$P" -I{} "$OPSD" submit command --socket "$st/s.sock" \
    --params '{"argv":["true"]}' >/dev/null
while ! "$OPSD" list --socket "$st/s.sock" --active --json | grep -q '"active": 0'; do sleep 0.01; done
t1=$(date +%s.%N)
kill -INT "$counter"
wait "$counter" 2>/dev/null || true
python3 - "$N" "$t0" "$t1" "$st/perf.txt" <<'PY'
import sys
n, t0, t1, path = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
out = [f"{n / (t1 - t0):.0f} jobs/s"]
for line in open(path):
    parts = line.split()
    if len(parts) < 2 or parts[1] == "seconds" or not parts[0].replace(",", "").replace(".", "").isdigit():
        continue
    value = float(parts[0].replace(",", ""))
    name = parts[2] if parts[1] == "msec" else parts[1]
    unit = " ms" if parts[1] == "msec" else ""
    out.append(f"{name.split(':')[-1]} {value / n:.2f}{unit}")
print("per job: " + ", ".join(out))
PY
