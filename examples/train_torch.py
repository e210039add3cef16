#!/usr/bin/env python3
"""A real PyTorch training run under opsd: an MLP on a synthetic
classification task, deterministic for a given --seed, with periodic and
on-SIGTERM checkpoints (model, optimizer, CPU and CUDA RNG states, position
in the epoch) and exact resume. A run stopped and resumed any number of
times ends with the same weights, bit for bit, as one that never stopped;
the script prints the sha256 of the final weights to check it.

    opsd submit command --gpus 1 --params '{"argv": ["python3", "examples/train_torch.py", "--epochs", "20"]}'

Runs by hand too (no opsd): checkpoints then go to ./checkpoints.
"""

import os

# Must be set before CUDA initializes: deterministic cuBLAS workspaces.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import argparse  # noqa: E402
import glob  # noqa: E402
import hashlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python"))
import opsd_job  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--samples", type=int, default=200_000)
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--checkpoint-every-steps", type=int, default=200)
    p.add_argument("--metric-every-steps", type=int, default=50)
    p.add_argument("--out", default=None,
                   help="final weights file [final_weights-<operation id>.pt in the working directory]")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args()


class MLP(nn.Module):
    def __init__(self, features, hidden, classes):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Dropout(0.1),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.1),
            nn.Linear(hidden, classes),
        )

    def forward(self, x):
        return self.net(x)


def make_data(args):
    """A fixed synthetic task: labels from a random teacher network."""
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.samples, args.features, generator=g)
    teacher = torch.randn(args.features, args.classes, generator=g)
    y = (torch.tanh(x) @ teacher + 0.5 * torch.randn(args.samples, args.classes, generator=g)).argmax(1)
    n_val = args.samples // 10
    return (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val])


def weights_sha256(model):
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main():
    args = parse_args()
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)

    torch.manual_seed(args.seed)  # model init and dropout
    (x_train, y_train), (x_val, y_val) = make_data(args)
    x_train, y_train = x_train.to(device), y_train.to(device)
    x_val, y_val = x_val.to(device), y_val.to(device)
    model = MLP(args.features, args.hidden, args.classes).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    steps_per_epoch = (len(x_train) + args.batch_size - 1) // args.batch_size
    total_steps = steps_per_epoch * args.epochs

    ckpt_dir = opsd_job.checkpoint_dir()
    epoch, step_in_epoch, global_step = 0, 0, 0
    state = opsd_job.resume_state()
    if state is not None and opsd_job.resume_checkpoint():
        ck = torch.load(opsd_job.resume_checkpoint(), map_location=device, weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        # map_location moved every tensor to the device; RNG states are set from CPU tensors.
        torch.set_rng_state(ck["cpu_rng"].cpu())
        if device.type == "cuda" and ck["cuda_rng"] is not None:
            torch.cuda.set_rng_state(ck["cuda_rng"].cpu(), device)
        epoch, step_in_epoch, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        print(f"resumed at epoch {epoch} step {step_in_epoch} (global step {global_step})", flush=True)
    else:
        print(f"training {args.epochs} epochs x {steps_per_epoch} steps on {device}", flush=True)

    def save_checkpoint():
        path = os.path.join(ckpt_dir, f"ckpt-{global_step:09d}.pt")
        torch.save({
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "cpu_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        }, path + ".tmp")
        os.replace(path + ".tmp", path)
        opsd_job.checkpoint({"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step}, path)
        # A new file per checkpoint: the one opsd last recorded stays valid
        # until the next line is read. Keep the two newest.
        for old in sorted(glob.glob(os.path.join(ckpt_dir, "ckpt-*.pt")))[:-2]:
            os.remove(old)

    t0 = time.monotonic()
    while epoch < args.epochs:
        # The epoch's order depends on (seed, epoch) only, so a resumed run
        # replays it and skips the batches already done.
        perm = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(args.seed * 1000 + epoch)).to(device)
        model.train()
        running = 0.0
        while step_in_epoch < steps_per_epoch:
            if opsd_job.should_stop():
                save_checkpoint()
                print(f"stopping at epoch {epoch} step {step_in_epoch}: checkpoint written", flush=True)
                return 0
            idx = perm[step_in_epoch * args.batch_size:(step_in_epoch + 1) * args.batch_size]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step_in_epoch += 1
            global_step += 1
            if global_step % args.metric_every_steps == 0:
                running = loss.item()
                opsd_job.metric(epoch=epoch + 1, step=global_step, loss=running)
                opsd_job.progress(
                    percentage=100.0 * global_step / total_steps,
                    message=f"Epoch {epoch + 1}/{args.epochs} · Batch {step_in_epoch}/{steps_per_epoch}",
                    steps_completed=global_step,
                    steps_total=total_steps,
                    context={"epoch": epoch + 1, "batch": step_in_epoch, "loss": running},
                )
            if global_step % args.checkpoint_every_steps == 0:
                save_checkpoint()
        model.eval()
        with torch.no_grad():
            logits = model(x_val)
            val_loss = F.cross_entropy(logits, y_val).item()
            val_acc = (logits.argmax(1) == y_val).float().mean().item()
        epoch += 1
        step_in_epoch = 0
        opsd_job.metric(epoch=epoch, val_loss=val_loss, val_accuracy=val_acc)
        print(f"epoch {epoch}: val_loss {val_loss:.4f} val_acc {val_acc:.4f} ({time.monotonic() - t0:.1f}s)", flush=True)
        save_checkpoint()

    # Not in the checkpoint directory: opsd removes it once the run completes.
    out = args.out or f"final_weights-{os.environ.get('OPSD_OPERATION_ID', 'manual')}.pt"
    torch.save(model.state_dict(), out)
    digest = weights_sha256(model)
    print(f"final weights: {out} sha256 {digest}", flush=True)
    opsd_job.result(weights_path=os.path.abspath(out), weights_sha256=digest,
                    val_loss=val_loss, val_accuracy=val_acc, steps=global_step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
