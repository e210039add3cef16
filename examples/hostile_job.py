#!/usr/bin/env python3
"""A program that misbehaves on purpose, for opsd's tests of hostile
command jobs (standard library only):

    --escape PIDFILE      start `sleep 1000` in a new session (setsid), out of
                          the program's process group; write its pid here
    --clean-env           start that grandchild with an empty environment
    --checkpoint-path P   report a checkpoint whose path is P (a FIFO, /proc)
    --metrics N           write N metric lines in one burst
    --linger SECONDS      then stay this long (SIGTERM ends it at once)
    --forever             then stay until SIGTERM
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time


def emit(f, obj):
    f.write(json.dumps(obj) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--escape")
    p.add_argument("--clean-env", action="store_true")
    p.add_argument("--checkpoint-path")
    p.add_argument("--metrics", type=int, default=0)
    p.add_argument("--linger", type=float, default=0.0)
    p.add_argument("--forever", action="store_true")
    a = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if a.escape:
        env = {} if a.clean_env else None
        child = subprocess.Popen(
            [shutil.which("sleep") or "/bin/sleep", "1000"],
            start_new_session=True,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        tmp = a.escape + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(child.pid))
        os.replace(tmp, a.escape)
    with open(os.environ["OPSD_PROGRESS_FILE"], "a", buffering=1 << 20) as f:
        if a.checkpoint_path:
            emit(f, {"checkpoint": {"state": {"step": 1}, "path": a.checkpoint_path}})
            emit(f, {"progress": {"message": "checkpoint reported"}})
        for i in range(a.metrics):
            emit(f, {"metric": {"i": i, "loss": 1.0 / (i + 1), "acc": i * 1e-6, "tag": "burst"}})
    if a.forever:
        while True:
            time.sleep(0.05)
    time.sleep(a.linger)


if __name__ == "__main__":
    main()
