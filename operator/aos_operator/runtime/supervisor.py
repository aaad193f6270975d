"""The node supervisor: one resident process that runs every instance of a runtime (systemd's part
in AosEdge), so a running service costs no process of ours beside its own.

`python -m aos_operator.runtime.supervisor --state-root S --run-root R`, started on demand by the
Runtime in its own session (so neither the agent's exit nor a Ctrl-C of `aosctl` reaches it). It
holds `R/supervisor.lock` while it lives (one per runtime), answers JSON-line requests on
`R/supervisor.sock` (start, stop, ping), and keeps all state on disk: the plan and status of each
instance in its data directory, the times of its recent starts in `starts.json`. It exits once
it has had no instance for `--linger` seconds; SIGTERM makes it exit at once, leaving the
containers running for the next supervisor to adopt.

One instance's life: set up the bundle, rootfs and volumes once, then loop `runc run --detach`
(create and start in one runc process), wait for the container's init, record how it ended,
apply the restart policy; tear everything down when stopped or given up.

- Exit codes: the supervisor is a child subreaper, so each container's init is re-parented to it
  when `runc run --detach` exits and `waitpid` gives its status. A detached container keeps its
  cgroup until `runc delete`, which is when the OOM-kill counter is read. runc does not stay
  resident.
- Output: stdout and stderr of a container are a FIFO in the bundle (not a pipe), opened
  read-write for the container: when the supervisor is gone the container's writes never get
  EPIPE (they block once the FIFO's 64 KiB are full), and the next supervisor opens the FIFO by
  its path and copies on into the capped log.
- Adoption after the supervisor's own restart: a running container is watched by its pidfd. It
  is no longer our child, so when it ends its exit status is unknown (exit code -1); the OOM
  counter still tells an OOM kill. A container that ended while no supervisor ran is deleted and
  the restart policy applies as if it had just ended.
- Restart policy (systemd's, as AosEdge configures it): after any end of the container, wait
  restartInterval and start again; a start that would be the (startBurst+1)-th within
  startInterval is not made and the instance is Failed with reason CrashLoop. startBurst or
  startInterval 0 turns the limit off, as in systemd.
- Stop: SIGTERM to the init (AosEdge, like the OCI image config's StopSignal, is not consulted:
  AosEdge ignores StopSignal and kills at once), SIGKILL after the grace period. A PID-namespace init that has no handler for the signal never receives
  it (pid_namespaces(7)), so then SIGKILL follows at once instead of after a useless wait.
- offlineTTL (offline.py): a running instance is stopped, as a stop request would, once the node's
  last-contact record is older than the TTL, and is then Failed with reason OfflineTimeout; a
  start or restart is not made while it is expired. Here rather than in the agent, so it holds
  while the agent is down too.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import json
import os
import select
import selectors
import signal
import socket
import stat
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aos_operator.bounded import parse_json
from aos_operator.errors import AosError
from aos_operator.runtime import rootfs as rootfs_module
from aos_operator.runtime import volumes
from aos_operator.runtime.cgroups import InstanceCgroup, detect_cgroups
from aos_operator.runtime.files import file_lock, write_atomically
from aos_operator.runtime.logs import CappedLog
from aos_operator.runtime.permission_server import PermissionServer
from aos_operator.runtime.offline import offline_deadline, timeout_message
from aos_operator.runtime.plan import PLAN_FILE, SPEC_FILE, SupervisorPlan
from aos_operator.runtime.runc import Runc
from aos_operator.runtime.status import InstanceStatus, Phase, Reason, Termination, read_status, write_status
from aos_operator.runtime.teardown import remove_cgroups, teardown_instance

SOCKET_FILE = "supervisor.sock"
LOCK_FILE = "supervisor.lock"
RECORD_FILE = "supervisor.json"  # {"pid", "start_ticks"} of the live supervisor, in the run root
LOG_FILE = "supervisor.log"
FIFO_FILE = "output.fifo"
STARTS_FILE = "starts.json"
_PR_SET_CHILD_SUBREAPER = 36
_DRAIN_SECONDS = 2.0
_MAX_REQUEST = 64 << 10
_LONGEST_WAIT = 3600.0
_UNKNOWN = "exit status unknown: the container was adopted after a supervisor restart"


def process_start_ticks(pid: int) -> tuple[int, str] | None:
    """(start time in clock ticks, state letter) of a process, None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[19]), fields[0]


def catches_signal(pid: int, signum: int) -> bool:
    """Whether the process has a handler for `signum` (SigCgt in /proc/<pid>/status)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError):
        pass
    return True  # unknown: give it the grace period


def _termination(wait_status: int | None, oom_kills: int, stopping: bool, killed: bool,
                 message: str = "") -> Termination:
    if wait_status is None:
        reason = Reason.OOM_KILLED if oom_kills else (Reason.STOPPED if stopping else Reason.CRASHED)
        return Termination(exit_code=-1, reason=reason, finished_at=time.time(), oom_kills=oom_kills,
                           message=message or "exit status unknown")
    code = os.waitstatus_to_exitcode(wait_status)
    signal_number = -code if code < 0 else None
    exit_code = 128 + signal_number if signal_number else code
    if oom_kills:
        reason = Reason.OOM_KILLED
    elif stopping:
        reason = Reason.KILLED if killed else Reason.STOPPED
    elif exit_code == 0:
        reason = Reason.COMPLETED
    else:
        reason = Reason.CRASHED
    return Termination(exit_code=exit_code, reason=reason, finished_at=time.time(), signal=signal_number,
                       oom_kills=oom_kills, message=message)


def prepare_bundle(plan: SupervisorPlan) -> None:
    """The runc bundle of an instance: directory, spec, volumes, rootfs. The spec is kept in the
    data directory, so a later supervisor can set the bundle up again."""
    bundle = Path(plan.run_dir)
    bundle.mkdir(parents=True, exist_ok=True)
    spec_text = (Path(plan.data_dir) / SPEC_FILE).read_text()
    write_atomically(bundle / SPEC_FILE, spec_text, mode=0o600)  # it may hold AOS_SECRET
    for volume in plan.volumes:
        volumes.mount_volume(volume)
    rootfs_module.assemble(plan.rootfs, parse_json(spec_text))


class Instance:
    """One supervised instance: its status, its container while it runs, its timers."""

    def __init__(self, node: NodeSupervisor, plan: SupervisorPlan, status: InstanceStatus) -> None:
        self.node = node
        self.plan = plan
        self.status = status
        self.bundle = Path(plan.run_dir)
        self.runc = Runc(Path(plan.runc_root), plan.runc_binary)
        self.cgroup = InstanceCgroup(node.cgroups, plan.cgroups_path)
        self.log = CappedLog(plan.log_path, plan.log_max_bytes)
        self.pid: int | None = None
        self.pidfd: int | None = None
        self.output: int | None = None
        self.our_child = False
        self.restart_at: float | None = None  # monotonic
        self.kill_at: float | None = None
        self.stopping = False
        self.killed = False
        self.done = False
        # A start request whose status came with it (not written by the runtime) is answered
        # once this instance's first status of it is on disk (see NodeSupervisor.start).
        self.answer: Callable[[], None] | None = None
        self.offline_at: float | None = None  # monotonic: when to look at the last-contact record again
        self.offline_stop = False

    @property
    def instance_id(self) -> str:
        return self.plan.instance_id

    def update(self, **changes: Any) -> None:
        self.status = self.status.evolve(**changes)
        write_status(self.plan.status_path, self.status)
        if self.answer is not None:
            answer, self.answer = self.answer, None
            answer()

    # --- setup, start ------------------------------------------------------------------------

    def setup(self) -> None:
        """Once per supervised life, not per restart."""
        prepare_bundle(self.plan)

    def begin(self, fresh: bool = True) -> None:
        """Set up and make the first start (a failing setup ends the instance as SetupError)."""
        try:
            if fresh:  # a new start request: the start limit counts from here
                (Path(self.plan.data_dir) / STARTS_FILE).unlink(missing_ok=True)
                if self.answer is not None and self.plan.volumes:
                    self.update()  # the volumes' checks run processes: answer before them
            if not fresh or self.bundle.exists():
                teardown_instance(self.plan)  # whatever a previous supervisor left half done
            self.setup()
        except AosError as error:
            self.finish(Phase.FAILED, Reason.SETUP_ERROR, str(error))
            return
        except OSError as error:  # the node's file system refused a step: this instance fails, not the supervisor
            self.finish(Phase.FAILED, Reason.SETUP_ERROR,
                        f"setting up the bundle failed: {error.strerror or error}: {error.filename or self.bundle}")
            return
        self.try_start()

    def _recent_starts(self) -> list[float]:
        try:
            return [float(t) for t in parse_json((Path(self.plan.data_dir) / STARTS_FILE).read_text())]
        except (FileNotFoundError, ValueError, TypeError):
            return []

    def _offline_deadline(self) -> float | None:
        return offline_deadline(self.plan.online_record, self.plan.offline_ttl) if self.plan.online_record else None

    def _offline_expired(self) -> bool:
        deadline = self._offline_deadline()
        return deadline is not None and time.time() >= deadline

    def _schedule_offline_check(self) -> None:
        deadline = self._offline_deadline()
        self.offline_at = None if deadline is None else time.monotonic() + max(0.0, deadline - time.time())

    def check_offline(self) -> None:
        """The offline deadline came: stop the instance unless a contact was recorded meanwhile."""
        self.offline_at = None
        if self.done or self.stopping:
            return
        if self._offline_expired():
            self.offline_stop = True
            self.request_stop(self.plan.stop_grace)
        else:
            self._schedule_offline_check()

    def try_start(self) -> None:
        """A start, unless it would break the start limit (then Failed, CrashLoop) or the
        offlineTTL has run out (then Failed, OfflineTimeout)."""
        self.restart_at = None
        if self._offline_expired():
            self.finish(Phase.FAILED, Reason.OFFLINE_TIMEOUT,
                        timeout_message(self.plan.online_record, self.plan.offline_ttl))
            return
        parameters = self.plan.run_parameters
        now = time.time()
        recent = [t for t in self._recent_starts() if 0 <= now - t < parameters.start_interval]
        if parameters.start_burst > 0 and parameters.start_interval > 0 and len(recent) >= parameters.start_burst:
            last = self.status.last_exit
            described = "none" if last is None else f"{last.reason}, exit code {last.exit_code}"
            why = (" (AosEdge restarts a service whatever its exit code, 0 included)"
                   if last is not None and last.exit_code == 0 else "")
            self.finish(Phase.FAILED, Reason.CRASH_LOOP,
                        f"start limit reached: {len(recent)} starts within {parameters.start_interval:g} s "
                        f"(startBurst {parameters.start_burst}); not started again; last end: {described}{why}")
            return
        self.run_once(recent + [now])

    def run_once(self, starts_times: list[float]) -> None:
        """One start: `runc run --detach`, and while runc works (most of a start), this start's
        bookkeeping: its time in the start limit's record, the Starting status."""
        recorded = False

        def record_start() -> None:
            nonlocal recorded
            recorded = True
            write_atomically(Path(self.plan.data_dir) / STARTS_FILE, json.dumps(starts_times))
            starts = self.status.starts + 1
            self.update(phase=Phase.STARTING, starts=starts, restarts=starts - 1, pid=None, start_time=time.time())

        fifo = self.bundle / FIFO_FILE
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo, 0o600)
        # Our end first (non-blocking, so the open does not wait for a writer), then the
        # container's: read-write, so the FIFO always has a reader and its writes never fail.
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        writer = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)
        pid_file = self.bundle / "container.pid"
        pid_file.unlink(missing_ok=True)
        try:
            with file_lock(Path(self.plan.cgroup_lock)):
                self.runc.run_detached(self.instance_id, self.bundle, pid_file, writer, self.bundle / "runc.log",
                                       meanwhile=record_start)
        except AosError as error:
            os.close(reader)
            if not recorded:  # runc did not even start: the attempt counts all the same
                record_start()
            self._start_failed(str(error))
            return
        finally:
            os.close(writer)
        # The init may have ended already: then it is our zombie (re-parented when runc exited,
        # reaped only in this loop), so its pidfd and exit status are still there.
        pid = int(pid_file.read_text())
        pidfd = os.pidfd_open(pid)
        self._watch(pid, pidfd, reader, our_child=True)
        # runc's exited helpers re-parented here hold a PID of the container's pids cgroup
        # until reaped: reap them now, before the service's first forks count against it.
        self.node.reap()
        self.update(phase=Phase.RUNNING, reason=None, message="", pid=pid)

    def _watch(self, pid: int, pidfd: int, output: int | None, our_child: bool) -> None:
        self.pid, self.pidfd, self.output, self.our_child = pid, pidfd, output, our_child
        self.node.selector.register(pidfd, selectors.EVENT_READ, (self.on_exit, None))
        if output is not None:
            self.node.selector.register(output, selectors.EVENT_READ, (self.on_output, None))
        self._schedule_offline_check()

    def _start_failed(self, message: str) -> None:
        self.runc.delete(self.instance_id, force=True)  # a half-created container would block the next try
        remove_cgroups(self.plan)
        termination = Termination(exit_code=-1, reason=Reason.START_ERROR, finished_at=time.time(), message=message)
        self.log.write(f"[aos runtime] start failed: {message}\n".encode())
        self.update(last_exit=termination)
        self.after_end(termination)

    # --- running ---------------------------------------------------------------------------

    def on_output(self, fd: int) -> None:
        if fd != self.output:
            return
        if not self._copy_output():
            self.node.selector.unregister(fd)
            os.close(fd)
            self.output = None

    def _copy_output(self) -> bool:
        """Copy what is there; False at end of file."""
        assert self.output is not None
        try:
            data = os.read(self.output, 1 << 16)
        except BlockingIOError:
            return True
        if data:
            self.log.write(data)
        return bool(data)

    def on_exit(self, fd: int) -> None:
        assert self.pid is not None and self.pidfd is not None
        self.node.selector.unregister(self.pidfd)
        os.close(self.pidfd)
        wait_status = self.node.exit_status(self.pid) if self.our_child else None
        message = "" if self.our_child else _UNKNOWN
        self.pid = self.pidfd = None
        self._drain()
        oom_kills = self.cgroup.oom_kills()
        self.runc.delete(self.instance_id, force=True)
        remove_cgroups(self.plan)
        termination = _termination(wait_status, oom_kills, self.stopping, self.killed, message)
        self.update(last_exit=termination, pid=None)
        self.after_end(termination)

    def _drain(self) -> None:
        """The init is gone and with it its PID namespace: the FIFO ends once the kernel closed
        the last writer's fd."""
        if self.output is None:
            return
        self.node.selector.unregister(self.output)
        deadline = time.monotonic() + _DRAIN_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            if select.select([self.output], [], [], left)[0] and not self._copy_output():
                break
        os.close(self.output)
        self.output = None

    def after_end(self, termination: Termination) -> None:
        if self.stopping and self.offline_stop:
            self.finish(Phase.FAILED, Reason.OFFLINE_TIMEOUT,
                        timeout_message(self.plan.online_record, self.plan.offline_ttl))
        elif self.stopping:
            self.finish(Phase.STOPPED, Reason.STOPPED, "")
        elif not self.plan.restart:
            phase = Phase.STOPPED if termination.exit_code == 0 else Phase.FAILED
            self.finish(phase, termination.reason, termination.message)
        else:
            interval = self.plan.run_parameters.restart_interval
            self.update(phase=Phase.STARTING, reason=termination.reason, pid=None,
                        message=f"restarting in {interval:g} s")
            self.restart_at = time.monotonic() + interval

    # --- stop, end -------------------------------------------------------------------------

    def request_stop(self, grace: float) -> None:
        if self.done or self.stopping:
            return
        self.stopping = True
        if self.pid is None or self.pidfd is None:  # waiting for a restart: nothing runs
            self.finish(Phase.STOPPED, Reason.STOPPED, "")
            return
        stop_signal = self.plan.stop_signal
        if grace > 0 and stop_signal != signal.SIGKILL and catches_signal(self.pid, stop_signal):
            self._signal(stop_signal)
            self.kill_at = time.monotonic() + grace
        else:
            self.kill()

    def kill(self) -> None:
        self.kill_at = None
        self.killed = True
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        assert self.pidfd is not None
        try:
            signal.pidfd_send_signal(self.pidfd, signum)
        except ProcessLookupError:
            pass  # already gone; the pidfd reports it

    def finish(self, phase: Phase, reason: str, message: str) -> None:
        """Tear down everything the instance put on the node and write its final status."""
        self.restart_at = self.kill_at = self.offline_at = None
        try:
            teardown_instance(self.plan)
        except AosError as error:
            message = f"{message} (teardown: {error})".strip()
        self.update(phase=phase, reason=reason, message=message, pid=None)
        self.log.close()
        self.done = True
        self.node.instances.pop(self.instance_id, None)

    def due(self, now: float) -> float | None:
        """The next moment this instance has something to do (monotonic), if any."""
        moments = [t for t in (self.restart_at, self.kill_at, self.offline_at) if t is not None]
        return min(moments) if moments else None

    def run_timers(self, now: float) -> None:
        if self.kill_at is not None and now >= self.kill_at:
            self.kill()
        if self.offline_at is not None and now >= self.offline_at:
            self.check_offline()
        if self.restart_at is not None and now >= self.restart_at:
            self.try_start()

    # --- adoption --------------------------------------------------------------------------

    def adopt(self) -> None:
        """Pick the instance up after a supervisor restart, without restarting a running container."""
        state = self.runc.state(self.instance_id)
        pid = int(state.get("pid") or 0) if state else 0
        if state and state.get("status") == "running" and pid > 0:
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                pidfd = None
            if pidfd is not None:
                fifo = self.bundle / FIFO_FILE
                output = None
                if fifo.exists() and stat.S_ISFIFO(fifo.lstat().st_mode):
                    output = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                self._watch(pid, pidfd, output, our_child=False)
                if self.status.phase != Phase.RUNNING or self.status.pid != pid:
                    self.update(phase=Phase.RUNNING, reason=None, message="", pid=pid)
                return
        was_running = self.status.phase == Phase.RUNNING
        oom_kills = self.cgroup.oom_kills() if state else 0
        if state:
            self.runc.delete(self.instance_id, force=True)
        if not was_running:  # it was being set up or started: do that again
            self.begin(fresh=False)
            return
        termination = _termination(None, oom_kills, False, False,
                                   "the container ended while no supervisor ran; exit status unknown")
        self.update(last_exit=termination, pid=None)
        try:
            teardown_instance(self.plan)
            self.setup()
        except AosError as error:
            self.finish(Phase.FAILED, Reason.SETUP_ERROR, str(error))
            return
        self.after_end(termination)


def select_timeout(moments: list[float], now: float) -> float | None:
    """Until the first moment, but an hour at most: epoll takes about 24 days at most, and a deadline
    can be years away (an offlineTTL, a restartInterval)."""
    return min(max(0.0, min(moments) - now), _LONGEST_WAIT) if moments else None


class NodeSupervisor:
    def __init__(self, state_root: Path, run_root: Path, linger: float) -> None:
        self.state_root = state_root
        self.run_root = run_root
        self.linger = linger
        self.cgroups = detect_cgroups()
        self.instances: dict[str, Instance] = {}
        self.exited: dict[int, int] = {}  # wait statuses reaped before their pidfd was handled
        self.selector = selectors.DefaultSelector()
        self.exit_requested = False
        self._lock_handle: Any = None
        self._socket: socket.socket | None = None
        self._socket_inode: int | None = None

    # --- process-wide ----------------------------------------------------------------------

    def acquire(self) -> bool:
        """Take the runtime's supervisor lock; False when another supervisor serves it."""
        self.run_root.mkdir(parents=True, exist_ok=True)
        self._lock_handle = open(self.run_root / LOCK_FILE, "a")  # noqa: SIM115 (held for the process's life)
        deadline = time.monotonic() + 30
        while True:
            try:
                fcntl.flock(self._lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if ping(self.run_root) is not None:
                    return False  # another one serves: nothing to do
                if time.monotonic() > deadline:
                    raise AosError(f"{self.run_root / LOCK_FILE}: held by a supervisor that does not answer") from None
                time.sleep(0.05)  # a previous supervisor is exiting

    def listen(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise AosError(f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(ctypes.get_errno())}")
        path = self.run_root / SOCKET_FILE
        path.unlink(missing_ok=True)  # we hold the lock: a socket there is a dead supervisor's
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        os.chmod(path, 0o600)
        listener.listen(64)
        listener.setblocking(False)
        self._socket, self._socket_inode = listener, os.stat(path).st_ino
        self.selector.register(listener, selectors.EVENT_READ, (self._accept, None))
        started = process_start_ticks(os.getpid())
        write_atomically(self.run_root / RECORD_FILE,
                         json.dumps({"pid": os.getpid(), "start_ticks": started[0] if started else None}))
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_write)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_exit_signal)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes the select to reap
        self.selector.register(wake_read, selectors.EVENT_READ, (self._drain_wakeups, None))

    def _on_exit_signal(self, signum: int, frame: object) -> None:
        self.exit_requested = True

    def _drain_wakeups(self, fd: int) -> None:
        try:
            while os.read(fd, 512):
                pass
        except BlockingIOError:
            pass

    def reap(self, wanted: int | None = None) -> None:
        """Collect every exited child (container inits, and whatever else is re-parented here);
        keep the wait statuses of inits for their pidfd handler. Safe between runc calls only:
        the loop is single-threaded, so no subprocess of ours is being waited for meanwhile."""
        deadline = time.monotonic() + 5
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                if wanted is None or wanted in self.exited or time.monotonic() > deadline:
                    return
                time.sleep(0.005)  # `wanted` is dying; it is ours, so it will be reaped here
                continue
            if pid == wanted or any(instance.pid == pid for instance in self.instances.values()):
                self.exited[pid] = wait_status

    def exit_status(self, pid: int) -> int | None:
        if pid not in self.exited:
            try:
                reaped, wait_status = os.waitpid(pid, 0)
                self.exited[reaped] = wait_status
            except ChildProcessError:
                pass
        return self.exited.pop(pid, None)

    # --- instances -------------------------------------------------------------------------

    def _load(self, instance_id: str, initial: InstanceStatus | None = None) -> Instance | None:
        data_dir = self.state_root / "instances" / instance_id
        if "/" in instance_id or instance_id in ("", ".", "..") or not (data_dir / PLAN_FILE).is_file():
            return None
        status = initial if initial is not None else read_status(data_dir / "status.json")
        if status is None:
            return None
        return Instance(self, SupervisorPlan.load(data_dir / PLAN_FILE, self.run_root), status)

    def adopt_all(self) -> None:
        root = self.state_root / "instances"
        for data_dir in sorted(root.iterdir()) if root.is_dir() else []:
            try:
                instance = self._load(data_dir.name)
                if instance is None or instance.status.phase.terminal:
                    if instance is not None:
                        instance.log.close()
                    continue
                self.instances[instance.instance_id] = instance
                instance.adopt()
            except Exception:  # one broken instance must not keep the others unsupervised
                traceback.print_exc()

    def start(self, instance_id: str, initial: InstanceStatus | None = None) -> dict[str, Any]:
        """Take an instance on. `initial` is its new Pending status when the runtime sent it
        instead of writing it: then the instance's first status write of this start (Starting,
        made while runc runs, or the failure) is also the answer, so the runtime returns only once
        the start is on disk, and its critical path has one status replace less (on ext4 a
        rename over a file waits for its data to be written back: about 3 ms here)."""
        if instance_id in self.instances:
            return {"ok": True, "already": True}
        if initial is not None and initial.instance_id != instance_id:
            return {"ok": False, "error": f"start {instance_id}: the status sent is {initial.instance_id}'s"}
        try:
            instance = self._load(instance_id, initial)
        except AosError as error:  # a damaged or misplaced plan: this request fails, not the supervisor
            return {"ok": False, "error": str(error)}
        if instance is None:
            return {"ok": False, "error": f"no instance {instance_id} to start"}
        if initial is None and instance.status.phase.terminal:
            # Without a status the request means "supervise it if it should run" (the runtime's
            # retry after a lost reply, or a look at an instance it found running): one that has
            # ended meanwhile, e.g. a --no-restart run adopted from its Pending status, stays ended.
            instance.log.close()
            return {"ok": True, "ended": True}
        self.instances[instance_id] = instance
        return {"ok": True, "begin": instance, "deferred": initial is not None}

    # --- requests --------------------------------------------------------------------------

    def _accept(self, fd: int) -> None:
        assert self._socket is not None
        try:
            connection, _ = self._socket.accept()
        except BlockingIOError:
            return
        connection.setblocking(False)
        self.selector.register(connection, selectors.EVENT_READ, (self._read_request, bytearray()))

    def _read_request(self, fd: int) -> None:
        key = self.selector.get_key(fd)
        connection, buffer = key.fileobj, key.data[1]
        assert isinstance(connection, socket.socket)
        try:
            data = connection.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        buffer.extend(data)
        if data and b"\n" not in buffer and len(buffer) < _MAX_REQUEST:
            return
        self.selector.unregister(connection)
        begin: Instance | None = None
        deferred = False
        try:
            request = parse_json(bytes(buffer).split(b"\n", 1)[0])
            reply = self.handle(request)
            begin = reply.pop("begin", None)
            deferred = bool(reply.pop("deferred", False))
        except (ValueError, TypeError, KeyError) as error:
            reply = {"ok": False, "error": f"bad request: {error}"}
        if begin is None or not deferred:
            _answer(connection, reply)
            if begin is not None:  # after the reply: the caller waits for the status, not for us
                begin.begin()
            return
        begin.answer = lambda: _answer(connection, reply)
        try:
            begin.begin()
        except BaseException as error:
            if begin.answer is not None:
                begin.answer = None
                _answer(connection, {"ok": False, "error": f"start failed: {error}"})
            raise
        if begin.answer is not None:  # nothing written (cannot happen: begin ends in a status)
            begin.answer = None
            _answer(connection, reply)

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "ping":
            return {"ok": True, "pid": os.getpid(), "instances": sorted(self.instances)}
        if op == "start":
            initial = request.get("status")
            return self.start(str(request["id"]), None if initial is None else InstanceStatus.from_json(initial))
        if op == "stop":
            instance = self.instances.get(str(request["id"]))
            if instance is None:
                return {"ok": True, "managed": False}
            instance.request_stop(float(request["grace"]))
            return {"ok": True, "managed": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    # --- the loop --------------------------------------------------------------------------

    def _socket_is_ours(self) -> bool:
        try:
            return os.stat(self.run_root / SOCKET_FILE).st_ino == self._socket_inode
        except FileNotFoundError:
            return False

    def run(self) -> None:
        idle_since: float | None = None
        while not self.exit_requested:
            now = time.monotonic()
            moments = [m for m in (i.due(now) for i in self.instances.values()) if m is not None]
            if not self.instances:
                idle_since = idle_since if idle_since is not None else now
                moments.append(idle_since + self.linger)
            else:
                idle_since = None
            for key, _ in self.selector.select(select_timeout(moments, now)):
                if self.selector.get_map().get(key.fd) is not key:
                    continue  # unregistered (and maybe closed) by an earlier callback of this round
                callback = key.data[0]
                callback(key.fd)
            self.reap()
            now = time.monotonic()
            for instance in list(self.instances.values()):
                try:
                    instance.run_timers(now)
                except Exception:
                    traceback.print_exc()
                    instance.finish(Phase.FAILED, Reason.SETUP_ERROR, "supervisor error; see supervisor.log")
            if not self.instances and idle_since is not None and now - idle_since >= self.linger:
                rootfs_module.prune_templates(self.run_root / rootfs_module.TEMPLATES_DIR)
                break
            if not self._socket_is_ours():
                break  # the run root was removed, or another supervisor took over
        self.close()

    def close(self) -> None:
        if self._socket is not None:
            if self._socket_is_ours():
                (self.run_root / SOCKET_FILE).unlink(missing_ok=True)
            self._socket.close()
        record = self.run_root / RECORD_FILE
        try:
            if parse_json(record.read_text()).get("pid") == os.getpid():
                record.unlink()
        except (OSError, ValueError):
            pass


def _answer(connection: socket.socket, reply: dict[str, Any]) -> None:
    """Send one reply and close the connection (a caller that gave up is no error)."""
    try:
        connection.setblocking(True)
        connection.settimeout(2)
        connection.sendall(json.dumps(reply).encode() + b"\n")
    except OSError:
        pass
    connection.close()


def ping(run_root: Path, timeout: float = 2.0) -> dict[str, Any] | None:
    """The live supervisor's answer to a ping, or None when none answers."""
    try:
        return request(run_root, {"op": "ping"}, timeout)
    except OSError:
        return None


def request(run_root: Path, message: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """One request to the supervisor; OSError when none answers (no socket, refused, reset)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        connection.connect(str(run_root / SOCKET_FILE))
        connection.sendall(json.dumps(message).encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = connection.recv(4096)
            if not chunk:
                raise ConnectionResetError(errno.ECONNRESET, "the supervisor closed the connection")
            reply += chunk
    return dict(parse_json(reply))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m aos_operator.runtime.supervisor")
    parser.add_argument("--state-root", type=Path, required=True)
    parser.add_argument("--run-root", type=Path, required=True)
    parser.add_argument("--linger", type=float, default=2.0)
    args = parser.parse_args(argv[1:])
    node = NodeSupervisor(args.state_root, args.run_root, args.linger)
    if not node.acquire():
        return 0
    node.listen()
    # The permission socket lives here: as long as the instances, across agent restarts.
    permissions = PermissionServer(args.state_root, args.run_root)
    permissions.start()
    try:
        node.adopt_all()
        node.run()
    finally:
        permissions.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
