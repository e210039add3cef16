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
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../clients/python"))
from opsd_client import Client  # noqa: E402  (the project's own client)

REQUESTS = {
    "health": ("health", {}),
    "submit": ("submit", {"type": "command", "params": {"argv": ["true"]}}),
    "held": ("submit", {"type": "command", "hold": True, "params": {"argv": ["true"]}}),
    "show": ("get", {"id": "last"}),
}


def round_trip(client, cmd, fields):
    """One request on a connection of its own (as `Client.request` does),
    timed from connect to the answer; an error answer stops the run."""
    t0 = time.perf_counter()
    client.request(cmd, **fields)
    return time.perf_counter() - t0


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: latency.py SOCKET")
    client = Client(socket=sys.argv[1])
    for pause in (0.0, 0.002):
        for name, (cmd, fields) in REQUESTS.items():
            times = []
            for _ in range(300):
                if pause:
                    time.sleep(pause)
                times.append(round_trip(client, cmd, fields))
            times.sort()
            print(
                f"pause {pause * 1000:.0f} ms  {name:7s} median {times[150] * 1e6:6.0f} us"
                f"  p90 {times[270] * 1e6:6.0f} us"
            )


if __name__ == "__main__":
    main()
