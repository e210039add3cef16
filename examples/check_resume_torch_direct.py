#!/usr/bin/env python3
# Drives examples/train_torch.py the way opsd's command job does (progress
# file, SIGTERM, checkpoint line, cut-back offset, OPSD_RESUME_*), on a GPU
# machine without the opsd binary: one uninterrupted run, one stopped at 30 %
# and 70 % and resumed; compares the weights' sha256 and the metric points.
#   python3 examples/check_resume_torch_direct.py --epochs 20 --seed 7
# (examples/check_resume_gpu.sh does the same through a real daemon.)
import json, os, signal, subprocess, sys, tempfile, time
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags = sys.argv[1:]
def lines(pf):
    out, off = [], 0
    for raw in open(pf, "rb").read().splitlines(keepends=True):
        off += len(raw); out.append((json.loads(raw), off))
    return out
def run(tag, stops=()):
    d = tempfile.mkdtemp(prefix=tag)
    pf = os.path.join(d, "progress.jsonl"); ck = os.path.join(d, "ckpt"); os.makedirs(ck)
    open(pf, "w").close()
    offset, resume, attempt, t0, info = 0, None, 0, time.time(), []
    stops = list(stops)
    while True:
        attempt += 1
        with open(pf, "r+b") as f: f.truncate(offset)
        env = dict(os.environ, OPSD_PROGRESS_FILE=pf, OPSD_CHECKPOINT_DIR=ck, OPSD_OPERATION_ID=tag, OPSD_ATTEMPT=str(attempt), PYTHONUNBUFFERED="1")
        if resume:
            env["OPSD_RESUME_STATE"] = json.dumps(resume[0]); env["OPSD_RESUME_CHECKPOINT"] = resume[1]
        p = subprocess.Popen([sys.executable, os.path.join(ROOT, "examples/train_torch.py")] + flags, env=env, cwd=d, stdout=open(os.path.join(d, f"log{attempt}"), "w"), stderr=subprocess.STDOUT)
        stop = stops.pop(0) if stops else None
        while p.poll() is None:
            if stop is not None:
                pct = [l["progress"]["percentage"] for l, _ in lines(pf) if "progress" in l]
                if pct and pct[-1] >= stop:
                    ts = time.time(); p.send_signal(signal.SIGTERM); p.wait(); info.append(f"stop at {pct[-1]:.1f}%: exit in {time.time()-ts:.2f}s"); break
            time.sleep(0.05)
        if p.returncode != 0: print(open(os.path.join(d, f"log{attempt}")).read()[-3000:]); sys.exit(f"{tag}: exit {p.returncode}")
        ls = lines(pf)
        res = [l["result"] for l, _ in ls if "result" in l]
        if res:
            metrics = [l["metric"] for l, _ in ls if "metric" in l]
            print(f"{tag}: {attempt} attempt(s), {time.time()-t0:.1f}s, {len(metrics)} metric points; " + "; ".join(info))
            print(open(os.path.join(d, f"log{attempt}")).read().splitlines()[0])
            return res[0]["weights_sha256"], metrics
        cps = [(l["checkpoint"], off) for l, off in ls if "checkpoint" in l]
        c, offset = cps[-1]
        resume = (c["state"], c.get("path"))
sha_a, m_a = run("straight")
sha_b, m_b = run("stopped", stops=[30, 70])
print("sha256 uninterrupted:", sha_a); print("sha256 stopped twice:", sha_b)
print("weights identical:", sha_a == sha_b, "| metric sequences identical:", m_a == m_b)
