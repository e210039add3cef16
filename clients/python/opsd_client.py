"""opsd_client: drive the opsd daemon from Python scripts and notebooks.
Standard library only; copy this file next to your notebook or put
``clients/python`` on ``PYTHONPATH``.

    from opsd_client import Client

    c = Client()                                  # $OPSD_SOCKET, else the default
    ids = [c.submit("training", {"data": "data/GOOG.csv", "learning_rate": lr})
           for lr in (0.0003, 0.001, 0.003)]
    runs = [c.wait(i) for i in ids]               # the final operations
    points, cursor = c.metrics(ids[0])            # [{"seq", "recorded_at", "data"}], next cursor

Every call is one request on the daemon's Unix socket (one JSON line each
way, as ``socat`` would send it). A refused request raises ``OpsdError``
with the server's ``code`` (``not_found``, ``bad_request``,
``invalid_transition``, ``not_resumable``, ``unavailable``, ...).
"""

import json
import os
import re
import socket as _socket
import time

__all__ = ["Client", "OpsdError", "default_socket_path", "FINAL_STATUSES"]

#: Statuses an operation does not leave by itself.
FINAL_STATUSES = ("completed", "failed", "cancelled")

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Set by the daemon for each run (GPUs it assigned, the job's own files);
# never copied from the caller's environment.
_DAEMON_ENV = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")


class OpsdError(Exception):
    """A request the daemon refused (``code`` is the server's error code),
    or a daemon that cannot be reached (``code`` is ``"unreachable"``)."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self):
        return f"{self.message} [{self.code}]"


def _first(var):
    v = os.environ.get(var)
    return v.split(":")[0] if v else None


def _default_state_dir():
    if os.environ.get("OPSD_STATE_DIR"):
        return os.environ["OPSD_STATE_DIR"]
    if _first("STATE_DIRECTORY"):
        return _first("STATE_DIRECTORY")
    if os.environ.get("XDG_STATE_HOME"):
        return os.path.join(os.environ["XDG_STATE_HOME"], "opsd")
    return os.path.join(os.environ.get("HOME") or "/tmp", ".local/state/opsd")


def default_socket_path():
    """The socket the CLI would use: ``$OPSD_SOCKET``, else
    ``$RUNTIME_DIRECTORY/opsd.sock`` (systemd), else
    ``$XDG_RUNTIME_DIR/opsd.sock``, else ``<state dir>/opsd.sock``."""
    if os.environ.get("OPSD_SOCKET"):
        return os.environ["OPSD_SOCKET"]
    for var in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
        d = _first(var)
        if d:
            return os.path.join(d, "opsd.sock")
    return os.path.join(_default_state_dir(), "opsd.sock")


def _absolute(kind, params):
    """File parameters made absolute from this process's directory (the
    daemon runs elsewhere), as the CLI does."""
    params = dict(params or {})
    if kind in ("training", "backtest", "pipeline"):
        for k in ("data", "model"):
            v = params.get(k)
            if isinstance(v, str) and v and not os.path.isabs(v):
                params[k] = os.path.abspath(v)
    return params


class Client:
    """A client of one daemon. ``socket``: its path (default:
    ``default_socket_path()``). ``timeout``: seconds to wait for each
    answer."""

    def __init__(self, socket=None, timeout=60.0):
        self.socket = os.fspath(socket) if socket is not None else default_socket_path()
        self.timeout = timeout

    def request(self, cmd, **fields):
        """Send one request (``cmd`` and its fields, as in the socket
        protocol); return the answer without ``ok``."""
        req = {"cmd": cmd}
        req.update({k: v for k, v in fields.items() if v is not None})
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            try:
                s.connect(self.socket)
            except OSError as e:
                raise OpsdError(
                    "unreachable",
                    f"cannot reach opsd at {self.socket}: {e.strerror or e}. Is the daemon "
                    "running? Start it with `opsd serve`, or pass Client(socket=...)",
                ) from None
            s.sendall((json.dumps(req) + "\n").encode())
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        finally:
            s.close()
        if not buf:
            raise OpsdError("unreachable", "opsd closed the connection without an answer")
        answer = json.loads(buf)
        if not answer.pop("ok", False):
            err = answer.get("error") or {}
            raise OpsdError(err.get("code", "unknown"), err.get("message", "unknown error"))
        return answer

    def submit(self, type, params=None, **options):
        """Queue an operation; returns its id. ``options``: ``parent``,
        ``priority``, ``gpus``, ``key``, ``max_attempts``, ``run_after``,
        ``phase``, ``fail_parent`` (as ``opsd submit``)."""
        return self.request("submit", type=type, params=_absolute(type, params), **options)[
            "operation_id"
        ]

    def run(self, argv, cwd=None, env=None, inherit_env=True, grace_seconds=None, **options):
        """Queue a ``command`` operation running ``argv`` in ``cwd``
        (default: this process's directory) with this process's environment
        (unless ``inherit_env=False``) plus ``env``; returns its id.
        ``options`` as for ``submit``."""
        environment = {}
        if inherit_env:
            environment = {
                k: v
                for k, v in os.environ.items()
                if _ENV_NAME.match(k) and "\0" not in v and k not in _DAEMON_ENV
            }
        environment.update(env or {})
        params = {
            "argv": [os.fspath(a) for a in argv],
            "cwd": os.path.abspath(cwd if cwd is not None else os.getcwd()),
            "env": environment,
        }
        if grace_seconds is not None:
            params["grace_seconds"] = grace_seconds
        return self.submit("command", params, **options)

    def get(self, id):
        """The operation: every column, live progress."""
        return self.request("get", id=id)["operation"]

    def list(self, **filters):
        """Operations, newest first: a list of operations. ``filters``:
        ``status`` (a status or a list), ``type``, ``active``, ``parent``,
        ``limit``, ``offset``."""
        if isinstance(filters.get("status"), str):
            filters["status"] = [filters["status"]]
        return self.request("list", **filters)["operations"]

    def children(self, id):
        """The child operations of ``id``."""
        return self.request("children", id=id)["operations"]

    def metrics(self, id, cursor=0, limit=None):
        """Metric points after ``cursor``: ``(points, next_cursor)``; pass
        the cursor back to get only newer points."""
        a = self.request("metrics", id=id, cursor=cursor, limit=limit)
        return a["metrics"], a["cursor"]

    def cancel(self, id, reason=None):
        """Cancel ``id`` and everything under it; the answer has
        ``previous_status``, ``status`` and ``stop_reason``."""
        return self.request("cancel", id=id, reason=reason)

    def resume(self, id):
        """Resume a cancelled or failed operation from its checkpoint."""
        return self.request("resume", id=id)

    def health(self):
        """Version, uptime, paths, workers, counts."""
        return self.request("health")

    def wait(self, id, timeout=None, poll=0.2):
        """Wait until ``id`` is completed, failed or cancelled; returns the
        final operation. Raises ``TimeoutError`` after ``timeout`` seconds
        (``None``: no limit); the operation keeps running."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            op = self.get(id)
            if op["status"] in FINAL_STATUSES:
                return op
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{id} is still {op['status']} after {timeout} s; wait again, "
                    f"or cancel it with Client.cancel({id!r})"
                )
            time.sleep(poll)
