"""CPU seconds of a process tree (this process and every descendant: in local Ray mode the
raylet, the GCS and every worker), read from ``/proc`` without extra packages.

Why: the ingestion goal compares vectors per *core* of the offline and the online path. Wall
clock on a shared 2-core machine says little about cores; the CPU seconds that the whole job
(driver, Ray's own processes, workers, the embedded sink) burned between two snapshots do. A
process that exits between two snapshots loses the CPU it burned after the first one, so
snapshot around work that keeps its processes (Ray keeps its workers). On a platform without
``/proc`` (or a remote Ray cluster, whose workers are not descendants) the figures cover only
what this machine's tree shows; ``snapshot`` then returns an empty dict on non-Linux.
"""

from __future__ import annotations

import os

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: str) -> tuple[int, int, float] | None:
    """(ppid, start time in ticks, user+system CPU seconds) of ``pid``, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2:].split()  # fields after the command name (which may hold ")")
    # rest[0] = state (field 3); ppid field 4, utime 14, stime 15, starttime 22
    return int(rest[1]), int(rest[19]), (int(rest[11]) + int(rest[12])) / _TICK


def snapshot(root: int | None = None) -> dict[tuple[int, int], float]:
    """CPU seconds so far of ``root`` (default: this process) and all its descendants, keyed by
    (pid, start time) so that a reused pid is not mistaken for an old process."""
    if not os.path.isdir("/proc"):
        return {}
    root = os.getpid() if root is None else root
    info: dict[int, tuple[int, int, float]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            s = _stat(name)
            if s is not None:
                info[int(name)] = s
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in info.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in info:
            out[(pid, info[pid][1])] = info[pid][2]
            todo.extend(kids.get(pid, ()))
    return out


def cpu_between(before: dict[tuple[int, int], float],
                after: dict[tuple[int, int], float]) -> float:
    """CPU seconds the tree burned between two snapshots (new processes count in full)."""
    return float(sum(v - before.get(k, 0.0) for k, v in after.items()))
