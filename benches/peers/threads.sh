#!/usr/bin/env bash
# Where the daemon's CPU goes per CLI-submitted `true` job, thread by
# thread: N submits, P at a time (one CLI call each), then each thread's
# run time from /proc/<pid>/task/<tid>/schedstat (exact, unlike the tick-
# sampled utime of /proc/<pid>/stat, which misses threads that run in
# short bursts) before and after, summed by thread name (the 64
# `opsd-worker-N` as one) and divided by N. Also the rate, the whole
# machine's busy CPU per job (/proc/stat) and, with --switches, each
# thread's voluntary context switches per job instead of its CPU.
# BENCHMARKS.md §25 has what it showed.
#
#   cargo build --release && benches/peers/threads.sh [N] [P] [path/to/opsd] [--switches]
set -euo pipefail
N=${1:-1000}
P=${2:-4}
here="$(cd "$(dirname "$0")" && pwd)"
OPSD=${3:-$here/../../target/release/opsd}
MODE=${4:-cpu}
[ -x "$OPSD" ] || { echo "build opsd first: cargo build --release" >&2; exit 1; }
. "$here/daemon.sh" threads
# "tid:name value" per live thread: run time in ns, or voluntary switches.
snap() {
  for t in /proc/"$daemon"/task/*; do
    if [ "$MODE" = --switches ]; then
      v=$(awk '/^voluntary_ctxt_switches/{print $2}' "$t/status")
    else
      v=$(cut -d' ' -f1 "$t/schedstat")
    fi
    echo "$(basename "$t"):$(cat "$t/comm") $v"
  done | sort
}
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
snap > "$st/before"
b0=$(busy); t0=$(date +%s.%N)
seq "$N" | xargs -P "$P" -I{} "$OPSD" submit command --socket "$st/s.sock" \
    --params '{"argv":["true"]}' >/dev/null
while ! "$OPSD" list --socket "$st/s.sock" --active --json | grep -q '"active": 0'; do sleep 0.01; done
t1=$(date +%s.%N); b1=$(busy)
snap > "$st/after"
python3 - "$N" "$t0" "$t1" "$b0" "$b1" "$(getconf CLK_TCK)" "$MODE" "$st/before" "$st/after" <<'PY'
import re, sys
n, t0, t1, b0, b1, tck, mode, before, after = sys.argv[1:]
n = int(n)
def load(path):
    out = {}
    for line in open(path):
        key, value = line.rsplit(" ", 1)
        out[key] = int(value)
    return out
a, b = load(before), load(after)
by_name = {}
for key, value in b.items():
    name = re.sub(r"-\d+$", "-*", key.split(":", 1)[1])
    by_name[name] = by_name.get(name, 0) + value - a.get(key, 0)
scale = 1 if mode == "--switches" else 1e6
unit = "switches" if mode == "--switches" else "ms"
print(f"{n / (float(t1) - float(t0)):.0f} jobs/s, machine {(float(b1) - float(b0)) * 1000 / float(tck) / n:.2f} ms CPU per job")
for name, v in sorted(by_name.items(), key=lambda kv: -kv[1]):
    if v / scale / n >= 0.005:
        print(f"  {name:<18} {v / scale / n:.3f} {unit} per job")
PY
