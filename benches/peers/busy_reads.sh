#!/usr/bin/env bash
# How long other clients wait while the daemon answers a large read:
# one client reads a 100,000-point metrics page (about 10 MB of JSON)
# four times while another sends `health` every 2 ms; prints the read's
# time and the health requests' p50 / p99 / max. The daemon has one async
# thread, so an answer it serialized there would hold up everyone else
# (BENCHMARKS.md §24).
#
#   cargo build --release && benches/peers/busy_reads.sh [path/to/opsd]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
OPSD=${1:-$here/../../target/release/opsd}
[ -x "$OPSD" ] || { echo "build opsd first: cargo build --release" >&2; exit 1; }
st=$(mktemp -d "${TMPDIR:-/tmp}/opsd-busy-reads.XXXXXX")
"$OPSD" serve --state-dir "$st" --socket "$st/s.sock" 2>/dev/null &
daemon=$!
trap 'kill $daemon 2>/dev/null || true; wait $daemon 2>/dev/null || true; rm -rf "$st"' EXIT
while ! "$OPSD" health --socket "$st/s.sock" >/dev/null 2>&1; do sleep 0.05; done
id=$("$OPSD" submit dummy --socket "$st/s.sock" --params '{"steps":100000,"step_ms":0}')
for _ in $(seq 120); do
  "$OPSD" show "$id" --socket "$st/s.sock" --json | grep -q '"status": "completed"' && break
  sleep 0.5
done
python3 - "$st/s.sock" "$id" <<'PY'
import json, socket, sys, threading, time

path, oid = sys.argv[1], sys.argv[2]

def req(obj):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall((json.dumps(obj) + "\n").encode())
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        buf += chunk
    s.close()
    return buf

lat, stop = [], [False]

def health_loop():
    while not stop[0]:
        t = time.perf_counter()
        req({"cmd": "health"})
        lat.append((time.perf_counter() - t) * 1e3)
        time.sleep(0.002)

th = threading.Thread(target=health_loop)
th.start()
t = time.perf_counter()
for _ in range(4):
    req({"cmd": "metrics", "id": oid, "limit": 100000})
each = (time.perf_counter() - t) / 4 * 1e3
stop[0] = True
th.join()
lat.sort()
print(f"metrics page of 100,000 points: {each:.0f} ms each; health meanwhile ({len(lat)} requests): "
      f"p50 {lat[len(lat) // 2]:.2f} ms, p99 {lat[int(len(lat) * 0.99)]:.2f} ms, max {lat[-1]:.1f} ms")
PY
