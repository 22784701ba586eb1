"""Servers under test: started pinned to one core in their own process group, watched through
/proc (CPU time and memory of the whole process tree: the group, and descendants that made groups
of their own, as BentoML's worker and Ray's actors do), and always stopped, even on Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from service.bench.wrk import BenchError

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ServerSpec:
    name: str
    command: list[str]
    port: int
    ready_path: str = "/health"
    env: dict[str, str] = field(default_factory=dict)
    ready_log_line: str | None = None  # instead of HTTP: wait for this many times in the log
    ready_log_count: int = 1
    clear_env: tuple[str, ...] = ()  # the caller's variables the server must not inherit
    max_open_files: int | None = None  # RLIMIT_NOFILE of the server (like `ulimit -n`)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def process_group(leader: int) -> list[int]:
    """Every live process in the leader's process group (the server and what it spawned)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields and int(fields[2]) == leader:  # field 5 of /proc/pid/stat: process group
            members.append(int(entry))
    return members


def process_tree(leader: int) -> list[int]:
    """The leader's process group and every descendant of the leader, wherever its group."""
    parents: dict[int, int] = {}
    members = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields:
            parents[int(entry)] = int(fields[1])  # field 4 of /proc/pid/stat: parent
            if int(fields[2]) == leader:
                members.add(int(entry))
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    stack = [leader, *members]
    while stack:
        pid = stack.pop()
        for child in children.get(pid, []):
            if child not in members:
                members.add(child)
                stack.append(child)
    return sorted(members | ({leader} & set(parents)))


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (which may hold spaces): state is [0]."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rindex(")") + 2:].split()


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes, in seconds (fields 14 and 15 of /proc/pid/stat)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def memory(pids: list[int]) -> dict[str, int]:
    """Resident (RSS) and proportional (PSS: shared pages split between sharers) bytes."""
    rss = pss = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
    return {"rss_bytes": rss, "pss_bytes": pss, "processes": len(pids)}


class Server:
    """One server process (tree) pinned to ``cpu`` (None: not pinned); a context manager that
    always stops it."""

    def __init__(self, spec: ServerSpec, cpu: int | None, log_dir: Path) -> None:
        self.spec, self.cpu = spec, cpu
        self.log_path = log_dir / f"{spec.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        env = {key: value for key, value in os.environ.items() if key not in self.spec.clear_env}
        env.update(self.spec.env, PYTHONUNBUFFERED="1")
        pinning = [] if self.cpu is None else ["taskset", "-c", str(self.cpu)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [*pinning, *self.spec.command],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,  # its own process group: stopped as one, Ctrl-C or not
                preexec_fn=self._limit if self.spec.max_open_files else None,
            )
        return self

    def _limit(self) -> None:  # in the child, before exec
        limit = self.spec.max_open_files
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise BenchError(f"{self.spec.name} exited ({code}) before it was ready; "
                                 f"the end of {self.log_path}:\n{self.log_tail()}")
            if self._ready():
                return
            time.sleep(0.25)
        raise BenchError(f"{self.spec.name} was not ready after {timeout_s:.0f} s; the end of "
                         f"{self.log_path}:\n{self.log_tail()}")

    def _ready(self) -> bool:
        if self.spec.ready_log_line is not None:
            text = self.log_path.read_text(errors="replace")
            return text.count(self.spec.ready_log_line) >= self.spec.ready_log_count
        try:
            with urllib.request.urlopen(self.spec.url + self.spec.ready_path, timeout=2) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def pids(self) -> list[int]:
        return process_tree(self.process.pid) if self.process else []

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pids())

    def memory(self) -> dict[str, int]:
        return memory(self.pids())

    def pause(self) -> None:
        """SIGSTOP the whole tree: an idle server that polls takes no CPU from the one measured."""
        _signal_pids(self.pids(), signal.SIGSTOP)

    def resume(self) -> None:
        _signal_pids(self.pids(), signal.SIGCONT)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self) -> None:
        stop_all([self])

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_all(servers: list[Server], grace_s: float = 8.0) -> None:
    """SIGTERM every server's process group at once, SIGKILL what is left after ``grace_s``."""
    running = [server for server in servers if server.process is not None]
    groups = {server.process.pid for server in running if server.process is not None}
    # descendants in groups of their own: their parents stop them on SIGTERM; SIGKILL if not
    trees = {pid for server in running for pid in server.pids()}
    _signal_pids(sorted(trees), signal.SIGCONT)  # a paused server must run to hear SIGTERM
    strays = trees - _members(groups)
    for signum, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for group in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signum)
        if signum == signal.SIGKILL:
            for pid in strays:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signum)
        deadline = time.monotonic() + wait_s
        while (groups or strays) and time.monotonic() < deadline:
            for server in running:  # reap the leaders so that their groups can empty
                if server.process is not None:
                    server.process.poll()
            groups = {group for group in groups if process_group(group)}
            strays = {pid for pid in strays if _alive(pid)}
            if groups or strays:
                time.sleep(0.1)
        if not groups and not strays:
            break
    for server in running:
        if server.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.process.wait(timeout=1)
        server.process = None


def _signal_pids(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _members(groups: set[int]) -> set[int]:
    return {pid for group in groups for pid in process_group(group)}


def _alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def python_command(*args: str) -> list[str]:
    return [sys.executable, *args]
