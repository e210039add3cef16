#!/usr/bin/env python3
"""Round trip of one request to a running opsd, as a client sees it.

Connects to the socket, sends one request line, reads the answer line and
closes: the daemon's share of a CLI call, without the CLI's own start-up.
Each request is timed 300 times back to back and 300 times with a 2 ms
pause before each (an idle daemon); medians and p90 in microseconds.

    opsd serve --state-dir /tmp/s --socket /tmp/s/s.sock &
    benches/peers/latency.py /tmp/s/s.sock

`submit` starts a `true` job (so back to back it waits behind the previous
job's claim and end); `held` submits one held (one commit, no run).
"""
import socket
import sys
import time

REQUESTS = {
    "health": b'{"cmd":"health"}\n',
    "submit": b'{"cmd":"submit","type":"command","params":{"argv":["true"]}}\n',
    "held": b'{"cmd":"submit","type":"command","hold":true,"params":{"argv":["true"]}}\n',
    "show": b'{"cmd":"get","id":"last"}\n',
}


def round_trip(path, request):
    s = socket.socket(socket.AF_UNIX)
    t0 = time.perf_counter()
    s.connect(path)
    s.sendall(request)
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        answer += chunk
    took = time.perf_counter() - t0
    s.close()
    if b'"ok":true' not in answer:
        sys.exit(f"the daemon refused {request!r}: {answer[:200]!r}")
    return took


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: latency.py SOCKET")
    path = sys.argv[1]
    for pause in (0.0, 0.002):
        for name, request in REQUESTS.items():
            times = []
            for _ in range(300):
                if pause:
                    time.sleep(pause)
                times.append(round_trip(path, request))
            times.sort()
            print(
                f"pause {pause * 1000:.0f} ms  {name:7s} median {times[150] * 1e6:6.0f} us"
                f"  p90 {times[270] * 1e6:6.0f} us"
            )


if __name__ == "__main__":
    main()
