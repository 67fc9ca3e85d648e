"""Run a command under a unit file's seccomp policy, the way systemd would apply it, without systemd as PID 1.

`python seccomp_launch.py UNIT -- CMD ARGS...`: parses the unit's SystemCallFilter=, SystemCallErrorNumber=,
RestrictAddressFamilies= and RestrictNamespaces= lines, expands groups with `systemd-analyze syscall-filter`,
sets PR_SET_NO_NEW_PRIVS, loads the filters with libseccomp (ctypes) and execs CMD. Rules follow systemd
252 (src/shared/seccomp-util.c, src/core/execute.c). The unit's other seccomp-backed settings
(LockPersonality, RestrictRealtime, RestrictSUIDSGID, ProtectClock/Hostname/KernelLogs) only return EPERM and
are not emulated.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["KILL", "Policy", "apply", "expand", "load_libseccomp", "parse_unit"]

KILL = -2  # systemd's SECCOMP_ERROR_NUMBER_KILL: SystemCallErrorNumber=kill, the default

_ACT_KILL_PROCESS = 0x80000000
_ACT_KILL_THREAD = 0x00000000
_ACT_ALLOW = 0x7FFF0000
_CMP_LT, _CMP_EQ, _CMP_GT, _CMP_MASKED_EQ = 2, 4, 6, 7
_PR_SET_NO_NEW_PRIVS = 38
# systemd's namespace_flag_map (src/shared/namespace-util.c); RestrictNamespaces=yes keeps none of them
_NS_FLAGS = (0x02000000, 0x08000000, 0x40000000, 0x00020000, 0x20000000, 0x10000000, 0x04000000)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


@dataclass
class Policy:
    """The seccomp-relevant settings of one unit, already resolved to names and numbers."""

    is_allow_list: bool = False
    syscalls: dict[str, int] = field(default_factory=dict)  # name -> its errno; -1: the list's action
    error_number: int = KILL
    address_families: set[int] | None = None  # allow-list of AF_* numbers; None = not restricted
    restrict_namespaces: bool = False


def load_libseccomp() -> ctypes.CDLL:
    """libseccomp.so.2 with the prototypes used here; OSError if it is not installed."""
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_exact_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                                 ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_api_get.restype = ctypes.c_uint
    return lib


def _unit_values(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1].strip() for line in text.splitlines() if line.strip().startswith(key + "=")]


def _errno(name: str) -> int:
    if name == "kill":
        return KILL
    return int(name) if name.isdigit() else int(getattr(errno, name))


def expand(name: str, cache: dict[str, list[str]] | None = None) -> list[str]:
    """The syscall names behind a name or @group, as this machine's systemd-analyze lists them."""
    if not name.startswith("@"):
        return [name]
    cache = {} if cache is None else cache
    if name not in cache:
        out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True, text=True,
                             check=True).stdout
        entries = [e.strip() for e in out.splitlines()[1:] if e.strip() and not e.strip().startswith("#")]
        cache[name] = [s for e in entries for s in expand(e, cache)]
    return cache[name]


def parse_unit(text: str) -> Policy:
    """Apply the unit's filter lines in order with systemd's rules (config_parse_syscall_filter)."""
    pol = Policy()
    cache: dict[str, list[str]] = {}
    started = False
    for value in _unit_values(text, "SystemCallFilter"):
        if not value:
            pol, started = Policy(), False  # an empty assignment resets the list
            continue
        invert = value.startswith("~")
        if not started:
            started, pol.is_allow_list = True, not invert
            if pol.is_allow_list:
                # systemd adds @default to every allow list
                pol.syscalls.update(dict.fromkeys(expand("@default", cache), -1))
        for word in value.lstrip("~").split():
            name, _, err = word.partition(":")
            num = _errno(err) if err else -1
            for sc in expand(name, cache):
                if invert != pol.is_allow_list or (invert and pol.is_allow_list and num >= 0):
                    pol.syscalls[sc] = num
                else:
                    pol.syscalls.pop(sc, None)
    for value in _unit_values(text, "SystemCallErrorNumber"):
        pol.error_number = _errno(value) if value else KILL
    for value in _unit_values(text, "RestrictAddressFamilies"):
        if value == "none":
            pol.address_families = set()
        elif value:
            if value.startswith("~"):
                raise ValueError("RestrictAddressFamilies=~ (deny-list) is not emulated")
            fams = {int(getattr(socket, f)) for f in value.split()}
            pol.address_families = fams if pol.address_families is None else pol.address_families | fams
    for value in _unit_values(text, "RestrictNamespaces"):
        if value not in ("yes", "no", "true", "false"):
            raise ValueError(f"RestrictNamespaces={value}: only yes/no are emulated")
        pol.restrict_namespaces = value in ("yes", "true")
    return pol


def _kill_process(lib: ctypes.CDLL) -> int:
    # systemd's scmp_act_kill_process(): whole-process kill where the kernel supports it (API level 3)
    return _ACT_KILL_PROCESS if lib.seccomp_api_get() >= 3 else _ACT_KILL_THREAD


def _errno_act(num: int) -> int:
    return 0x00050000 | (num & 0xFFFF)


class _Filter:
    def __init__(self, lib: ctypes.CDLL, default: int) -> None:
        self.lib = lib
        self.ctx = lib.seccomp_init(default)
        if not self.ctx:
            raise OSError("seccomp_init failed")

    def rule(self, action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
        nr = self.lib.seccomp_syscall_resolve_name(name.encode())
        if nr == -1:  # __NR_SCMP_ERROR: a name libseccomp does not know; systemd ignores it too
            return
        arr = (_ArgCmp * max(len(cmps), 1))(*[_ArgCmp(*c) for c in cmps])
        r = self.lib.seccomp_rule_add_exact_array(self.ctx, action, nr, len(cmps), arr)
        if r < 0 and r != -errno.EDOM:  # EDOM: not a syscall on this architecture, ignored as systemd does
            raise OSError(-r, f"seccomp rule for {name}: {os.strerror(-r)}")

    def load(self) -> None:
        r = self.lib.seccomp_load(self.ctx)
        self.lib.seccomp_release(self.ctx)
        if r < 0:
            raise OSError(-r, f"seccomp_load: {os.strerror(-r)}")


def apply(pol: Policy, lib: ctypes.CDLL) -> None:
    """Load the policy's filters into this process (irreversible; exec the target next)."""
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    negative = _kill_process(lib) if pol.error_number == KILL else _errno_act(pol.error_number)
    if pol.restrict_namespaces:
        # seccomp_restrict_namespaces(): clone3 gets ENOSYS so libc falls back to clone(), whose flags show
        f = _Filter(lib, _ACT_ALLOW)
        f.rule(_errno_act(errno.ENOSYS), "clone3")
        f.rule(_errno_act(errno.EPERM), "setns")
        for flag in _NS_FLAGS:
            f.rule(_errno_act(errno.EPERM), "unshare", (0, _CMP_MASKED_EQ, flag, flag))
            f.rule(_errno_act(errno.EPERM), "clone", (0, _CMP_MASKED_EQ, flag, flag))
        f.load()
    if pol.address_families is not None:
        # seccomp_restrict_address_families() with an allow list: below, above and the gaps get EAFNOSUPPORT
        f = _Filter(lib, _ACT_ALLOW)
        eaf = _errno_act(errno.EAFNOSUPPORT)
        if not pol.address_families:
            f.rule(eaf, "socket")
        else:
            lo, hi = min(pol.address_families), max(pol.address_families)
            f.rule(eaf, "socket", (0, _CMP_LT, lo, 0))
            f.rule(eaf, "socket", (0, _CMP_GT, hi, 0))
            for af in range(lo + 1, hi):
                if af not in pol.address_families:
                    f.rule(eaf, "socket", (0, _CMP_EQ, af, 0))
        f.load()
    if pol.syscalls or pol.is_allow_list:
        # apply_syscall_filter(): an allow list's default is the negative action; a deny list's rules carry it
        f = _Filter(lib, negative if pol.is_allow_list else _ACT_ALLOW)
        for name, num in sorted(pol.syscalls.items()):
            if num == KILL:
                action = _kill_process(lib)
            elif num >= 0:
                action = _errno_act(num)
            else:
                action = _ACT_ALLOW if pol.is_allow_list else negative
            f.rule(action, name)
        f.load()


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: seccomp_launch.py UNIT -- CMD [ARGS...]", file=sys.stderr)
        return 2
    pol = parse_unit(Path(argv[0]).read_text())
    apply(pol, load_libseccomp())
    os.execvp(argv[2], argv[2:])
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
