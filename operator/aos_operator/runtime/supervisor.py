"""The supervisor of one instance: a small process that plays systemd's part in AosEdge.

`python -m aos_operator.runtime.supervisor <plan.json>`, started by the runtime in its own
session, so it outlives the runtime process. It sets up the rootfs and volumes, then loops:
`runc create` + `runc start`, wait for the container to end, record how it ended, apply the
restart policy. It tears everything down and exits when stopped (SIGTERM) or when it gives up.

Exit codes and OOM kills: runc does not keep the exit status of a detached container, so the
supervisor makes itself a child subreaper; the container's init is re-parented to it when
`runc create` exits, and `waitpid` gives the status. Create/start (not `runc run`) leaves the
cgroup in place after the init died until `runc delete`, which is when the OOM-kill counter of the
memory cgroup is read. The container's stdout and stderr are one pipe that the supervisor copies
into the capped service log.

Restart policy (systemd's, as AosEdge configures it): after any end of the container, wait
restartInterval and start again; a start that would be the (startBurst+1)-th within startInterval
is not made and the instance is Failed with reason CrashLoop. startBurst or startInterval 0 turns
the limit off, as in systemd.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import sys
import time
import traceback
from collections import deque
from pathlib import Path

from aos_operator.errors import AosError
from aos_operator.runtime import rootfs as rootfs_module
from aos_operator.runtime import volumes
from aos_operator.runtime.cgroups import InstanceCgroup, detect_cgroups
from aos_operator.runtime.files import file_lock, write_atomically
from aos_operator.runtime.logs import CappedLog
from aos_operator.runtime.plan import SPEC_FILE, SupervisorPlan
from aos_operator.runtime.runc import Runc
from aos_operator.runtime.status import InstanceStatus, Phase, Reason, Termination, read_status, write_status
from aos_operator.runtime.teardown import remove_cgroups, teardown_instance

_PR_SET_CHILD_SUBREAPER = 36
_DRAIN_SECONDS = 2.0


class Supervisor:
    def __init__(self, plan: SupervisorPlan) -> None:
        self.plan = plan
        self.runc = Runc(Path(plan.runc_root), plan.runc_binary)
        self.cgroup = InstanceCgroup(detect_cgroups(), plan.cgroups_path)
        self.bundle = Path(plan.run_dir)
        self.stop_requested = False
        status = read_status(plan.status_path)
        self.status = status or InstanceStatus(plan.instance_id, plan.identity, plan.package)
        self.log = CappedLog(plan.log_path, plan.log_max_bytes)
        self._wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)

    def _request_stop(self, signum: int, frame: object) -> None:
        self.stop_requested = True

    def update(self, **changes: object) -> None:
        self.status = self.status.evolve(**changes)
        write_status(self.plan.status_path, self.status)

    # --- the whole life -------------------------------------------------------------------

    def run(self) -> int:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            self.update(phase=Phase.FAILED, reason=Reason.SETUP_ERROR, message="prctl(PR_SET_CHILD_SUBREAPER) failed")
            return 1
        final: dict[str, object]
        try:
            self.setup()
            final = self.loop()
        except AosError as error:
            final = {"phase": Phase.FAILED, "reason": Reason.SETUP_ERROR, "message": str(error)}
        except Exception as error:  # a bug: keep the traceback next to the status
            traceback.print_exc()
            final = {"phase": Phase.FAILED, "reason": Reason.SETUP_ERROR,
                     "message": f"supervisor error: {type(error).__name__}: {error}"}
        try:
            teardown_instance(self.plan)
        except AosError as error:
            final = {**final, "message": f"{final.get('message') or ''} (teardown: {error})".strip()}
        self.update(pid=None, **final)
        self.log.close()
        return 0

    def setup(self) -> None:
        """Bundle directory, volumes, rootfs. The spec is kept in the data directory, so a new
        supervisor (after a lost one) can set the bundle up again."""
        self.bundle.mkdir(parents=True, exist_ok=True)
        spec_text = (Path(self.plan.data_dir) / SPEC_FILE).read_text()
        write_atomically(self.bundle / SPEC_FILE, spec_text)
        for volume in self.plan.volumes:
            volumes.mount_volume(volume)
        rootfs_module.assemble(self.plan.rootfs, json.loads(spec_text))

    def loop(self) -> dict[str, object]:
        """Start, wait, restart; returns the final status fields."""
        parameters = self.plan.run_parameters
        limited = parameters.start_burst > 0 and parameters.start_interval > 0
        recent_starts: deque[float] = deque()
        while not self.stop_requested:
            now = time.monotonic()
            while recent_starts and now - recent_starts[0] >= parameters.start_interval:
                recent_starts.popleft()
            if limited and len(recent_starts) >= parameters.start_burst:
                return {"phase": Phase.FAILED, "reason": Reason.CRASH_LOOP,
                        "message": f"more than {parameters.start_burst} starts within "
                                   f"{parameters.start_interval:g} s; last: {self._describe_last_exit()}"}
            recent_starts.append(now)
            termination = self.run_once()
            if self.stop_requested:
                break
            if not self.plan.restart:
                phase = Phase.STOPPED if termination.exit_code == 0 else Phase.FAILED
                return {"phase": phase, "reason": termination.reason, "message": termination.message}
            self.update(phase=Phase.STARTING, reason=termination.reason, pid=None,
                        message=f"restarting in {parameters.restart_interval:g} s")
            self.sleep(parameters.restart_interval)
        return {"phase": Phase.STOPPED, "reason": Reason.STOPPED, "message": ""}

    def _describe_last_exit(self) -> str:
        last = self.status.last_exit
        return "none" if last is None else f"{last.reason}, exit code {last.exit_code}"

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop_requested and (left := deadline - time.monotonic()) > 0:
            select.select([self._wake_read], [], [], left)
            self._drain_wakeups()

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_read, 512):
                pass
        except BlockingIOError:
            pass

    # --- one run of the container ---------------------------------------------------------

    def run_once(self) -> Termination:
        starts = self.status.starts + 1
        self.update(phase=Phase.STARTING, starts=starts, restarts=starts - 1, pid=None, start_time=time.time())
        output_read, output_write = os.pipe2(os.O_CLOEXEC)
        pid_file = self.bundle / "container.pid"
        pid_file.unlink(missing_ok=True)
        try:
            with file_lock(Path(self.plan.cgroup_lock)):
                self.runc.create(self.plan.instance_id, self.bundle, pid_file, output_write,
                                 self.bundle / "runc.log")
        except AosError as error:
            os.close(output_read)
            return self._start_failed(str(error))
        finally:
            os.close(output_write)
        pid = int(pid_file.read_text())
        pidfd = os.pidfd_open(pid)
        try:
            self.runc.start(self.plan.instance_id)
        except AosError as error:
            os.close(output_read)
            os.close(pidfd)
            self.runc.delete(self.plan.instance_id, force=True)
            self._reap(pid)
            return self._start_failed(str(error))
        self.update(phase=Phase.RUNNING, reason=None, message="", pid=pid)
        wait_status = self._wait(pid, pidfd, output_read)
        oom_kills = self.cgroup.oom_kills()
        self.runc.delete(self.plan.instance_id, force=True)
        remove_cgroups(self.plan)
        termination = _termination(wait_status, oom_kills, killed=self.stop_requested)
        self.update(last_exit=termination, pid=None)
        return termination

    def _start_failed(self, message: str) -> Termination:
        self.runc.delete(self.plan.instance_id, force=True)  # a half-created container would block the next try
        remove_cgroups(self.plan)
        termination = Termination(exit_code=-1, reason=Reason.START_ERROR, finished_at=time.time(), message=message)
        self.log.write(f"[aos runtime] start failed: {message}\n".encode())
        self.update(last_exit=termination)
        return termination

    def _wait(self, pid: int, pidfd: int, output: int) -> int | None:
        """Copy output to the log until the init exits; returns its wait status."""
        killed = False
        exited = False
        wait_status: int | None = None
        readers = [pidfd, output, self._wake_read]
        while not exited:
            if self.stop_requested and not killed:
                self.runc.kill(self.plan.instance_id, "KILL")
                killed = True
            ready, _, _ = select.select(readers, [], [])
            if self._wake_read in ready:
                self._drain_wakeups()
            if output in ready and not self._copy_output(output):
                readers.remove(output)
            if pidfd in ready:
                wait_status, exited = self._reap(pid), True
        os.close(pidfd)
        # The init is gone, so is its PID namespace; the pipe ends once the kernel closed their fds.
        deadline = time.monotonic() + _DRAIN_SECONDS
        while output in readers and (left := deadline - time.monotonic()) > 0:
            if select.select([output], [], [], left)[0] and not self._copy_output(output):
                break
        os.close(output)
        return wait_status

    def _copy_output(self, output: int) -> bool:
        data = os.read(output, 1 << 16)
        if data:
            self.log.write(data)
        return bool(data)

    def _reap(self, pid: int) -> int | None:
        """Reap every exited child (runc's helpers are re-parented here too); the init's wait
        status, or None if it was not ours to reap."""
        init_status: int | None = None
        while True:
            try:
                reaped, wait_status = os.waitpid(-1, 0 if init_status is None else os.WNOHANG)
            except ChildProcessError:
                return init_status
            if reaped == 0:
                return init_status
            if reaped == pid:
                init_status = wait_status


def _termination(wait_status: int | None, oom_kills: int, killed: bool) -> Termination:
    if wait_status is None:
        return Termination(exit_code=-1, reason=Reason.OOM_KILLED if oom_kills else Reason.CRASHED,
                           finished_at=time.time(), oom_kills=oom_kills, message="exit status unknown")
    code = os.waitstatus_to_exitcode(wait_status)
    signal_number = -code if code < 0 else None
    exit_code = 128 + signal_number if signal_number else code
    if oom_kills:
        reason = Reason.OOM_KILLED
    elif killed:
        reason = Reason.KILLED
    elif exit_code == 0:
        reason = Reason.COMPLETED
    else:
        reason = Reason.CRASHED
    return Termination(exit_code=exit_code, reason=reason, finished_at=time.time(), signal=signal_number,
                       oom_kills=oom_kills)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m aos_operator.runtime.supervisor PLAN_JSON", file=sys.stderr)
        return 2
    plan = SupervisorPlan.load(Path(argv[1]))
    return Supervisor(plan).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
