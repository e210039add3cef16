#!/usr/bin/env bash
# Checks on a GPU machine that a PyTorch run under opsd, interrupted by a
# daemon restart, ends with the same weights (bit for bit) as one that was
# never interrupted. Needs python3 with torch, and an opsd binary:
#
#   OPSD=target/release/opsd examples/check_resume_gpu.sh [train_torch.py flags...]
#
# Prints the timings and both sha256 digests; exits 1 when they differ.
set -euo pipefail
cd "$(dirname "$0")/.."
OPSD=${OPSD:-target/release/opsd}
FLAGS=("$@")
[ ${#FLAGS[@]} -gt 0 ] || FLAGS=(--epochs 30 --seed 7)
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

json() { python3 -c "import json,sys; v=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

start_daemon() { # state dir
  "$OPSD" serve --state-dir "$1" --socket "$1/opsd.sock" >>"$1/daemon.log" 2>&1 &
  DAEMON=$!
  for _ in $(seq 300); do [ -S "$1/opsd.sock" ] && return; sleep 0.1; done
  echo "daemon did not start" >&2; cat "$1/daemon.log" >&2; exit 1
}

submit() { # state dir
  local params
  params=$(python3 -c 'import json,sys; print(json.dumps({"argv": ["python3", "examples/train_torch.py"] + sys.argv[1:]}))' "${FLAGS[@]}")
  "$OPSD" submit command --gpus 1 --params "$params" --socket "$1/opsd.sock"
}

show() { "$OPSD" show "$2" --json --socket "$1/opsd.sock"; }

wait_done() { # state dir, id
  while :; do
    s=$(show "$1" "$2" | json 'v["status"]')
    case $s in completed) return 0 ;; failed|cancelled) show "$1" "$2"; return 1 ;; esac
    sleep 0.5
  done
}

echo "== uninterrupted run"
mkdir -p "$WORK/a"; start_daemon "$WORK/a"
t0=$(date +%s.%N)
A=$(submit "$WORK/a")
wait_done "$WORK/a" "$A"
t1=$(date +%s.%N)
SHA_A=$(show "$WORK/a" "$A" | json 'v["result_summary"]["weights_sha256"]')
METRICS_A=$("$OPSD" metrics "$A" --json --socket "$WORK/a/opsd.sock" | json 'len(v["metrics"])')
kill -TERM $DAEMON; wait $DAEMON || true

echo "== interrupted run (daemon SIGTERM at ~40 %, then restarted)"
mkdir -p "$WORK/b"; start_daemon "$WORK/b"
t2=$(date +%s.%N)
B=$(submit "$WORK/b")
while :; do
  p=$(show "$WORK/b" "$B" | json 'v["progress_percent"] or 0')
  python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) >= 40 else 1)" "$p" && break
  sleep 0.2
done
ts=$(date +%s.%N)
kill -TERM $DAEMON; wait $DAEMON || true
te=$(date +%s.%N)
sqlite3 "$WORK/b/opsd.db" "select status, stop_reason, progress_percent from operations" 2>/dev/null || true
start_daemon "$WORK/b"
tr=$(date +%s.%N)
wait_done "$WORK/b" "$B"
t3=$(date +%s.%N)
SHA_B=$(show "$WORK/b" "$B" | json 'v["result_summary"]["weights_sha256"]')
ATTEMPT=$(show "$WORK/b" "$B" | json 'v["attempt"]')
METRICS_B=$("$OPSD" metrics "$B" --json --socket "$WORK/b/opsd.sock" | json 'len(v["metrics"])')
SEQS_OK=$("$OPSD" metrics "$B" --json --socket "$WORK/b/opsd.sock" | json '[m["seq"] for m in v["metrics"]] == list(range(1, len(v["metrics"]) + 1))')
kill -TERM $DAEMON; wait $DAEMON || true

python3 - "$t0" "$t1" "$t2" "$ts" "$te" "$tr" "$t3" <<'PY'
import sys
t0, t1, t2, ts, te, tr, t3 = map(float, sys.argv[1:])
print(f"uninterrupted run:            {t1 - t0:7.1f} s")
print(f"interrupted run, until stop:  {ts - t2:7.1f} s")
print(f"daemon shutdown (checkpoint): {te - ts:7.1f} s")
print(f"resumed run, after restart:   {t3 - tr:7.1f} s")
PY
echo "attempts: $ATTEMPT   metric points: $METRICS_A vs $METRICS_B   seqs contiguous: $SEQS_OK"
echo "sha256 uninterrupted: $SHA_A"
echo "sha256 interrupted:   $SHA_B"
grep -h "resumed at\|stopping at" "$WORK"/b/logs/*.log || true
[ "$SHA_A" = "$SHA_B" ] && [ "$METRICS_A" = "$METRICS_B" ] && echo "IDENTICAL" || { echo "DIFFERENT"; exit 1; }
