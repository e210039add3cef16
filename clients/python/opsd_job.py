"""opsd_job: report progress, metrics and checkpoints from your own script
to the opsd daemon. Standard library only; copy this file next to your
script or put ``clients/python`` on ``PYTHONPATH``.

Under opsd (a ``command`` operation) every call appends one JSON line to
``$OPSD_PROGRESS_FILE``; the daemon tails it. Run by hand, every call is a
no-op, so the same script still works from a terminal::

    import opsd_job

    state = opsd_job.resume_state() or {"epoch": 0}       # 1. resume
    for epoch in range(state["epoch"] + 1, epochs + 1):
        loss = train_one_epoch()
        opsd_job.progress(percentage=100 * epoch / epochs,  # 2. progress
                          message=f"Epoch {epoch}/{epochs}")
        opsd_job.metric(epoch=epoch, loss=loss)             # 3. metrics
        if opsd_job.should_stop():                          # 4. SIGTERM seen
            torch.save(..., path)
            opsd_job.checkpoint({"epoch": epoch}, path)     # 5. checkpoint
            sys.exit(0)

Rules that keep a resumed run identical to an uninterrupted one:

- report a metric point before the checkpoint that covers its work, and
  resume from the state in that checkpoint: the daemon keeps exactly the
  points reported before the checkpoint it resumes from;
- write checkpoint files completely before calling ``checkpoint()`` (write
  to a temporary name, then ``os.replace``); the daemon fsyncs them.
"""

import json
import math
import os
import signal

__all__ = [
    "active",
    "progress",
    "metric",
    "checkpoint",
    "result",
    "should_stop",
    "resume_state",
    "resume_checkpoint",
    "checkpoint_dir",
    "attempt",
]

_PROGRESS_FILE = os.environ.get("OPSD_PROGRESS_FILE")
_fd = None
_stop_seen = False


def _on_sigterm(signum, frame):
    global _stop_seen
    _stop_seen = True


# Under opsd a SIGTERM (cancel, daemon shutdown) means "checkpoint and
# exit": record it instead of dying, and let the loop call should_stop().
# By hand, signals keep their usual meaning.
if _PROGRESS_FILE:
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:
        # Imported outside the main thread: the caller must install it.
        pass


def active():
    """True when running under opsd."""
    return bool(_PROGRESS_FILE)


def _clean(value):
    """JSON has no NaN or infinity: send them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        # numpy / torch scalars
        try:
            return _clean(value.item())
        except (TypeError, ValueError):
            pass
    return value


def _emit(obj):
    """Append one line: a single write (O_APPEND, so lines from several
    processes never interleave), then fsync."""
    global _fd
    if not _PROGRESS_FILE:
        return
    if _fd is None:
        _fd = os.open(_PROGRESS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    data = (json.dumps(_clean(obj), separators=(",", ":"), allow_nan=False) + "\n").encode()
    while data:
        n = os.write(_fd, data)
        data = data[n:]
    os.fsync(_fd)


def progress(percentage=None, message=None, *, current_step=None, steps_completed=None,
             steps_total=None, items_processed=None, items_total=None, context=None):
    """Report progress; fields left as None keep their previous value.
    ``context`` is a dict of domain details (epoch, batch, ...)."""
    fields = {
        "percentage": percentage,
        "message": message,
        "current_step": current_step,
        "steps_completed": steps_completed,
        "steps_total": steps_total,
        "items_processed": items_processed,
        "items_total": items_total,
        "context": context,
    }
    _emit({"progress": {k: v for k, v in fields.items() if v is not None}})


def metric(data=None, **values):
    """Append one metric point, e.g. ``metric(epoch=3, loss=0.41)``."""
    point = dict(data or {})
    point.update(values)
    _emit({"metric": point})


def checkpoint(state, path=None):
    """Record a resumable state (JSON-able) and optionally the checkpoint
    file or directory holding the rest (weights, optimizer, RNG states)."""
    line = {"state": state}
    if path is not None:
        line["path"] = os.path.abspath(os.fspath(path))
    _emit({"checkpoint": line})


def result(data=None, **values):
    """Set the operation's result summary (shown by ``opsd show``)."""
    summary = dict(data or {})
    summary.update(values)
    _emit({"result": summary})


def should_stop():
    """True once opsd asked the script to stop (SIGTERM): checkpoint and
    exit soon; after ``grace_seconds`` the daemon sends SIGKILL."""
    return _stop_seen


def resume_state():
    """The state of the checkpoint this run resumes from, or None."""
    text = os.environ.get("OPSD_RESUME_STATE")
    if not text:
        return None
    return json.loads(text)


def resume_checkpoint():
    """The path given with that checkpoint, or None."""
    return os.environ.get("OPSD_RESUME_CHECKPOINT") or None


def checkpoint_dir(default="checkpoints"):
    """A directory for checkpoint files that opsd keeps across attempts
    (``default``, created, when run by hand)."""
    d = os.environ.get("OPSD_CHECKPOINT_DIR") or default
    os.makedirs(d, exist_ok=True)
    return d


def attempt():
    """1 on the first run, more after a resume."""
    return int(os.environ.get("OPSD_ATTEMPT", "1"))
