"""`sluicegate serve --workers N`: N worker processes serving one listening socket, under a supervisor.

The supervisor binds the socket, then forks the workers: each runs the gateway as a single
process would, on the inherited socket, and the kernel hands each new connection to one of them.
It restarts a worker that dies (with a growing pause when one keeps dying at start), passes
SIGHUP (reload the config) to every worker, and on SIGTERM or SIGINT passes the signal on (each
worker drains for `server.drain_s` on SIGTERM, then finishes its calls) and exits once all have
stopped. A worker whose supervisor is killed gets SIGTERM from the kernel, so none is left behind.

The supervisor runs no event loop and starts no thread, so forking it is safe; the modules the
workers need are imported before the fork and frozen out of the garbage collector's reach, so
their pages stay shared between the workers (copy on write).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("sluicegate.supervisor")

#: a worker that dies within this many seconds of its start counts as failing to start
EARLY_EXIT_S = 5.0
#: the longest pause before restarting a worker that keeps failing to start
MAX_RESTART_PAUSE_S = 30.0
#: how long the supervisor waits, after passing SIGTERM on, before it kills what is left
#: (beyond the drain and uvicorn's graceful shutdown, which end first)
STOP_GRACE_S = 120.0
_PR_SET_PDEATHSIG = 1


def default_workers() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The listening socket the workers share (inheritable across the fork)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class Supervisor:
    """Keeps `workers` processes running `run_worker(index)` until told to stop."""

    def __init__(self, workers: int, run_worker: Callable[[int], int | None]) -> None:
        self.workers = workers
        self.run_worker = run_worker
        #: pid -> worker index
        self.children: dict[int, int] = {}
        #: per worker index: its last start time and how many early deaths in a row it had
        self._started: dict[int, float] = {}
        self._failures: dict[int, int] = {}
        #: per worker index, when it may be started again (after early deaths)
        self._due: dict[int, float] = {}
        self._signals: list[int] = []
        self.stopping = False
        self._stop_deadline = 0.0
        self.restarts = 0
        #: the supervisor's own pid (a worker checks it still has it for a parent)
        self.pid = os.getpid()

    def run(self) -> int:
        """Start the workers and supervise them; the exit code once all have stopped."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        # Pages of what is imported so far stay shared after the fork (no refcount write by gc).
        gc.collect()
        gc.freeze()
        try:
            for index in range(self.workers):
                self._spawn(index)
            log.info("supervising %d workers (pids %s)", self.workers, ", ".join(map(str, self.children)))
            while self.children or (not self.stopping and self._due):
                self._handle_signals()
                self._reap()
                self._restart_due()
                if self.stopping and self.children and time.monotonic() > self._stop_deadline:
                    log.error("workers still running %.0f s after the stop; killing them", STOP_GRACE_S)
                    self._send(signal.SIGKILL)
                    self._stop_deadline = float("inf")
                time.sleep(0.05)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._signals.append(sig)

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if sig == signal.SIGHUP:
                log.info("SIGHUP: every worker reloads its config")
                self._send(signal.SIGHUP)
                continue
            if not self.stopping:
                log.info("%s: stopping %d workers", signal.Signals(sig).name, len(self.children))
                self.stopping = True
                self._stop_deadline = time.monotonic() + STOP_GRACE_S
                self._due.clear()
            # Passed on every time: a second SIGINT makes the workers stop at once.
            self._send(sig)

    def _send(self, sig: int) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            index = self.children.pop(pid, None)
            if index is None:
                continue
            if self.stopping:
                continue
            how = _exit_text(status)
            lived = time.monotonic() - self._started.get(index, 0.0)
            failures = self._failures[index] = self._failures.get(index, 0) + 1 if lived < EARLY_EXIT_S else 0
            pause = 0.0 if failures <= 1 else min(MAX_RESTART_PAUSE_S, 0.5 * 2 ** (failures - 2))
            log.error("worker %d (pid %d) %s after %.1f s; restarting it in %.1f s", index, pid, how, lived, pause)
            self._due[index] = time.monotonic() + pause

    def _restart_due(self) -> None:
        if self.stopping:
            return
        now = time.monotonic()
        for index, due in list(self._due.items()):
            if due <= now:
                del self._due[index]
                self.restarts += 1
                self._spawn(index)

    def _spawn(self, index: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.getpid()
        pid = os.fork()
        if pid:
            self.children[pid] = index
            self._started[index] = time.monotonic()
            return
        # The worker: default signal handling (the server installs its own), and SIGTERM when the
        # supervisor dies, whatever way it dies.
        code = 1
        try:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            # (the frozen objects stay frozen: the garbage collector leaves their pages shared)
            _die_with_parent(self.pid)
            result = self.run_worker(index)
            code = 0 if result is None else int(result)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def _die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGTERM when the supervisor dies (Linux; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the supervisor died before the call: go now
        os._exit(1)


def _exit_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with {os.WEXITSTATUS(status)}"
