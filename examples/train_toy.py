#!/usr/bin/env python3
"""A dependency-free stand-in for a training script, for opsd's tests and
demos: epochs with progress and metrics, checkpoints (periodic and on
SIGTERM) with a weights file, resume, and flags to misbehave.

    opsd submit command --params '{"argv": ["python3", "examples/train_toy.py", "--epochs", "20"]}'
"""

import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python"))
import opsd_job  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--step-ms", type=int, default=100, help="time per epoch")
    p.add_argument("--checkpoint-every", type=int, default=5, help="epochs; 0: only on SIGTERM")
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument("--pid-file", help="write this process's pid here")
    p.add_argument("--grandchild-pid-file", help="start a child that ignores SIGTERM; write its pid here")
    p.add_argument("--fail-code", type=int, help="exit with this code at --fail-at")
    p.add_argument("--fail-at", type=int, default=1, help="epoch at which --fail-code applies")
    p.add_argument("--spew-mb", type=int, default=0, help="print this many MiB to stdout first")
    p.add_argument("--malformed", action="store_true", help="write malformed progress lines")
    p.add_argument("--wait-file", help="wait until this file exists before training")
    return p.parse_args()


def write_atomically(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main():
    args = parse_args()
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.pid_file:
        write_atomically(args.pid_file, os.getpid())
    if args.grandchild_pid_file:
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(1000)"
        child = subprocess.Popen([sys.executable, "-c", code])
        write_atomically(args.grandchild_pid_file, child.pid)
    if args.spew_mb:
        line = (b"x" * 1023) + b"\n"
        block = line * 64
        out = sys.stdout.buffer
        for _ in range(args.spew_mb * 16):
            out.write(block)
        out.flush()
    if args.malformed and opsd_job.active():
        with open(os.environ["OPSD_PROGRESS_FILE"], "a") as f:
            f.write("this is not json\n")
            f.write('{"progress": 5}\n')
            f.write('{"metrc": {"loss": 1}}\n')
    if args.wait_file:
        opsd_job.progress(message="waiting for " + args.wait_file)
        while not os.path.exists(args.wait_file) and not opsd_job.should_stop():
            time.sleep(0.02)

    ckpt_dir = opsd_job.checkpoint_dir()
    state = opsd_job.resume_state() or {"epoch": 0}
    start = state["epoch"]
    weights = 0.0
    if opsd_job.resume_checkpoint():
        with open(opsd_job.resume_checkpoint()) as f:
            weights = json.load(f)["weights"]
    print(f"starting at epoch {start + 1} of {args.epochs} (attempt {opsd_job.attempt()})", flush=True)

    def save(epoch):
        # A new file per checkpoint: the one opsd last recorded must stay
        # intact until it has read the next checkpoint line.
        path = os.path.join(ckpt_dir, f"weights-{epoch:06d}.json")
        write_atomically(path, {"epoch": epoch, "weights": weights})
        opsd_job.checkpoint({"epoch": epoch}, path)
        for old in sorted(glob.glob(os.path.join(ckpt_dir, "weights-*.json")))[:-2]:
            os.remove(old)

    for epoch in range(start + 1, args.epochs + 1):
        deadline = time.monotonic() + args.step_ms / 1000
        while time.monotonic() < deadline and not opsd_job.should_stop():
            time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
        if opsd_job.should_stop():
            # The interrupted epoch is not done: checkpoint the last one.
            print(f"SIGTERM: checkpointing epoch {epoch - 1}", flush=True)
            save(epoch - 1)
            return 0
        if args.fail_code is not None and epoch == args.fail_at:
            print("Traceback (most recent call last):", file=sys.stderr)
            print(f"RuntimeError: simulated failure at epoch {epoch}", file=sys.stderr, flush=True)
            return args.fail_code
        weights = weights * 0.5 + epoch
        loss = round(1.0 / epoch, 6)
        opsd_job.progress(
            percentage=100.0 * epoch / args.epochs,
            message=f"Epoch {epoch}/{args.epochs}",
            steps_completed=epoch,
            steps_total=args.epochs,
            context={"epoch": epoch},
        )
        opsd_job.metric(epoch=epoch, loss=loss)
        print(f"epoch {epoch} loss {loss}", flush=True)
        if args.checkpoint_every and epoch % args.checkpoint_every == 0 and epoch < args.epochs:
            save(epoch)
    opsd_job.result(
        epochs=args.epochs,
        resumed_from=start,
        weights=weights,
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
