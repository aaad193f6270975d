"""The default seccomp profile of service containers (hardening beyond AosEdge, which sets none).

A deny-list: everything is allowed except system calls a service has no business making on an
edge node (kernel modules, mounts, namespaces, clocks, keyrings, tracing, BPF, io_uring, reboot,
swap). The spirit of Docker's default profile, written as a short deny-list so ordinary programs
(Python, busybox, glibc) keep working. Denied calls fail with EPERM, not a kill, so a program can
handle the refusal. Pure: returns a dict for the OCI runtime spec's `linux.seccomp`.
"""

from __future__ import annotations

import errno
from typing import Any

# Grouped by why they are denied.
_DENIED_SYSCALLS: tuple[tuple[str, ...], ...] = (
    # the kernel itself: modules, kexec, reboot, swap, accounting, kernel log
    ("init_module", "finit_module", "delete_module", "create_module", "query_module", "get_kernel_syms",
     "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "syslog", "_sysctl",
     "uselib", "nfsservctl", "lookup_dcookie", "vhangup", "ustat"),
    # file systems and namespaces: the container's view of the world is fixed by the runtime
    ("mount", "umount", "umount2", "pivot_root", "mount_setattr", "move_mount", "open_tree", "fsopen",
     "fsconfig", "fsmount", "fspick", "unshare", "setns", "quotactl", "quotactl_fd",
     "open_by_handle_at", "name_to_handle_at", "fanotify_init"),
    # host-wide clocks and names
    ("settimeofday", "stime", "clock_settime", "clock_adjtime", "adjtimex"),
    # keyrings are not namespaced
    ("add_key", "request_key", "keyctl"),
    # looking into or steering other processes and the kernel
    ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "perf_event_open", "bpf",
     "userfaultfd", "migrate_pages", "move_pages"),
    # raw hardware and legacy x86 modes
    ("iopl", "ioperm", "vm86", "vm86old"),
    # io_uring bypasses seccomp for the operations it carries
    ("io_uring_setup", "io_uring_enter", "io_uring_register"),
)

# clone() with any of these flags would create a namespace (the flags argument is arg 0 on x86 and arm).
_NAMESPACE_CLONE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)

_ARCHITECTURES = {
    "amd64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "386": ["SCMP_ARCH_X86"],
    "arm64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
    "arm": ["SCMP_ARCH_ARM"],
}


def denied_syscalls() -> list[str]:
    return sorted(name for group in _DENIED_SYSCALLS for name in group)


def default_seccomp_profile(architecture: str) -> dict[str, Any]:
    """`linux.seccomp` for a node of this OCI architecture (amd64, arm64, arm, 386)."""
    rules: list[dict[str, Any]] = [
        {"names": denied_syscalls(), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM},
        # clone3 passes its flags in memory that seccomp cannot read: answer ENOSYS so libc falls
        # back to clone(), whose flags are checked below.
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
    ]
    for flag in _NAMESPACE_CLONE_FLAGS:
        rules.append({
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": errno.EPERM,
            "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
        })
    profile: dict[str, Any] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules}
    if architecture in _ARCHITECTURES:
        profile["architectures"] = list(_ARCHITECTURES[architecture])
    return profile
