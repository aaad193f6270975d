"""Remove everything an instance put on the node, keeping its data.

Idempotent and safe to call on a half set-up instance: kills and deletes the container if runc
still knows it, unmounts everything under the run directory (rootfs overlay, base view, tmpfs,
volume file systems), detaches the volumes' loop devices, removes the cgroup directories and the
empty parents runc leaves, and deletes the run directory. The volume images, logs and status stay.
Used by the node supervisor when an instance ends, and by the runtime for what an ended one left.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from aos_operator.runtime import mounts
from aos_operator.runtime.cgroups import InstanceCgroup, detect_cgroups
from aos_operator.runtime.files import file_lock
from aos_operator.runtime.plan import SupervisorPlan
from aos_operator.runtime.runc import Runc
from aos_operator.runtime.volumes import detach_loops


def remove_cgroups(plan: SupervisorPlan) -> None:
    with file_lock(Path(plan.cgroup_lock)):
        InstanceCgroup(detect_cgroups(), plan.cgroups_path).remove()


def teardown_instance(plan: SupervisorPlan) -> None:
    runc = Runc(Path(plan.runc_root), plan.runc_binary)
    if runc.state(plan.instance_id) is not None:
        runc.kill(plan.instance_id, "KILL")
        runc.delete(plan.instance_id, force=True)
    run_dir = Path(plan.run_dir)
    mounts.unmount_all_under(run_dir)
    for volume in plan.volumes:
        detach_loops(Path(volume.image))
    remove_cgroups(plan)
    shutil.rmtree(run_dir, ignore_errors=True)
