"""Run a submission's code in a process of its own, with limits, and hear what its tests saw.

A *zygote* (``python -m vm.lessons.sandbox``) imports vm and warms the CPU core once, then
forks one child per job, so a child starts in milliseconds with nothing of other jobs in
its memory. The child:

- runs under limits: CPU time, address space (memory), file size (its output goes to a
  file, so printing past the cap ends it with SIGXFSZ), no core files;
- is guarded by an audit hook installed before any submitted code runs: no fork, exec,
  subprocess, signals to others, sockets, ctypes calls, gc or frame hunting, tracing, file
  writes, or reads of the instructor's files (the lesson sources, the grader's output);
- gets the instructor's setup cells, the student's answers and the public tests first;
  only after they ran does the hidden tests' code arrive (through the socket, never a
  file), with the child's output muted;
- reports *observations* only (each ``t.expect``'s observed value, as a Python literal);
  the parent compares them with the expectations of a trusted run of the instructor's
  solution, so a child that changes the checker cannot change what counts as right.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_MESSAGES = 4 << 20  # bytes a child may send back
ROOT = Path(__file__).resolve().parent.parent.parent


class SandboxError(RuntimeError):
    """The sandbox itself (its zygote) failed: no fault of the job's."""


@dataclass
class Limits:
    """What one job may use."""

    seconds: float = 60.0  # wall time for the whole job
    cell_seconds: float = 20.0  # each cell and test, a soft limit (TimeoutError inside)
    memory: int = 1 << 30  # bytes of address space beyond what the warm zygote holds
    output: int = 1 << 20  # bytes of printed output


@dataclass
class CellRun:
    """A cell as the child runs it: a label ("setup 2", "00-registers") and its code."""

    label: str
    source: str
    kind: str = "setup"  # setup, solution or tests


@dataclass
class TestReport:
    """One test as the child saw it."""

    exercise: str
    test: str
    hidden: bool
    observed: list[Any]
    expected: list[Any]
    whats: list[str]
    hints: list[str]
    error: str | None


@dataclass
class JobResult:
    """Everything a job reported, and how its process ended."""

    tests: list[TestReport] = field(default_factory=list)
    cell_errors: dict[str, str] = field(default_factory=dict)
    tamper: list[str] = field(default_factory=list)
    variant: dict[str, Any] = field(default_factory=dict)
    finished: bool = False
    ended: str = ""  # how the process ended, when it was not by finishing
    output: str = ""  # what it printed before the hidden tests (capped)
    seconds: float = 0.0


# --------------------------------------------------------------------------- the parent


class Sandbox:
    """A warm zygote and the means to run jobs in children forked from it."""

    def __init__(self, limits: Limits | None = None, deny: list[Path] | None = None) -> None:
        self.limits = limits or Limits()
        self.deny = [str(Path(p).resolve()) for p in (deny or [])]
        self.deny.append(str(ROOT / "lessons"))
        self.scratch = Path(tempfile.mkdtemp(prefix="vmlab-sandbox-"))
        self.control, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        with open(self.scratch / "zygote.log", "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vm.lessons.sandbox", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                cwd=self.scratch,
                start_new_session=True,
            )
        theirs.close()
        self.replies = self.control.makefile("r", encoding="utf-8")
        ready = self.replies.readline()
        if not ready:
            log = (self.scratch / "zygote.log").read_text()[-2000:]
            raise RuntimeError(f"the grading sandbox did not start:\n{log}")

    def run(
        self,
        cells: list[CellRun],
        hidden: list[str],
        student: str | None = None,
        seed: int | None = None,
    ) -> JobResult:
        """Run ``cells`` then the public tests, then ``hidden`` (code that registers the
        hidden tests) and those, in a fresh child; return what it reported."""
        started = time.monotonic()
        mine, child_end = socket.socketpair()
        out_path = self.scratch / f"out-{os.getpid()}-{time.monotonic_ns()}"
        work = self.scratch / "work"
        work.mkdir(exist_ok=True)
        job = {
            "out": str(out_path),
            "cwd": str(work),
            "deny": self.deny,
            "limits": vars(self.limits),
        }
        try:
            socket.send_fds(self.control, [json.dumps(job).encode() + b"\n"], [child_end.fileno()])
            child_end.close()
            pid = json.loads(self.replies.readline())["pid"]
        except (OSError, ValueError, KeyError) as error:
            mine.close()
            raise SandboxError(f"the sandbox's zygote is gone ({error})") from None
        result = JobResult()
        deadline = started + self.limits.seconds
        try:
            self._converse(mine, result, cells, hidden, student, seed, deadline)
        finally:
            mine.close()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            try:
                status = json.loads(self.replies.readline())
            except ValueError:
                raise SandboxError("the sandbox's zygote is gone") from None
        if not result.finished and not result.ended:
            result.ended = describe_status(status, self.limits)
        try:
            with open(out_path, "rb") as f:
                result.output = f.read(self.limits.output).decode("utf-8", "replace")
            out_path.unlink()
        except OSError:
            pass
        result.seconds = time.monotonic() - started
        return result

    def _converse(self, sock, result, cells, hidden, student, seed, deadline) -> None:
        def send(message: dict) -> None:
            sock.sendall(json.dumps(message).encode() + b"\n")

        received = 0
        buffer = b""

        def messages():
            nonlocal buffer, received
            while True:
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    yield line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    return
                received += len(chunk)
                if received > MAX_MESSAGES:
                    raise OverflowError
                buffer += chunk

        try:
            send({"student": student, "seed": seed, "cells": [vars(c) for c in cells]})
            for line in messages():
                message = parse_message(line)
                if message is None:
                    result.ended = "it sent the grader something that is not a report"
                    return
                kind = message.get("kind")
                if kind == "cell":
                    result.cell_errors[str(message["label"])] = str(message["error"])
                elif kind == "tamper":
                    result.tamper.append(str(message["what"]))
                elif kind == "variant":
                    result.variant = message["variant"]
                elif kind == "test":
                    result.tests.append(TestReport(**message["report"]))
                elif kind == "public-done":
                    send({"hidden": hidden})
                elif kind == "done":
                    result.finished = True
                    return
        except TimeoutError:
            result.ended = f"time limit: it ran longer than {self.limits.seconds:g} s"
        except OverflowError:
            result.ended = "it sent more than 4 MB of reports"
        except (OSError, KeyError, TypeError, ValueError) as error:
            result.ended = f"it broke off ({type(error).__name__})"

    def close(self) -> None:
        """Stop the zygote (and any child of it still running)."""
        with contextlib.suppress(OSError):
            self.control.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_message(line: bytes) -> dict | None:
    """A child's report line: a Python literal of plain data (never code)."""
    try:
        value = ast.literal_eval(line.decode("utf-8"))
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def describe_status(status: dict, limits: Limits) -> str:
    """Why a child ended before finishing, in a few words."""
    signal_number = status.get("signal")
    if signal_number == signal.SIGXFSZ:
        return f"output cap: it printed more than {limits.output >> 10} KiB"
    if signal_number == signal.SIGXCPU:
        return f"time limit: it used more than {limits.seconds:g} s of CPU"
    if signal_number == signal.SIGKILL:
        return f"time limit: it ran longer than {limits.seconds:g} s"
    if signal_number is not None:
        return f"it was ended by signal {signal.Signals(signal_number).name}"
    code = status.get("code")
    return f"it ended its own process (exit code {code}) before the tests finished"


# --------------------------------------------------------------------------- the zygote


def zygote(control_fd: int) -> None:
    """Warm up, then fork a child per job the parent sends; report its pid and status."""
    warm_up()
    control = socket.socket(fileno=control_fd)
    control.sendall(b'{"ready": true}\n')
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(control, 1 << 16, 1)
        except OSError:
            return
        if not data:
            return
        job = json.loads(data)
        child_sock = socket.socket(fileno=fds[0])
        pid = os.fork()
        if pid == 0:  # the child
            code = 70
            try:
                control.close()
                child(child_sock, job)
                code = 0
            except BaseException:
                code = 71
            finally:
                os._exit(code)
        child_sock.close()
        control.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            report = {"signal": os.WTERMSIG(status)}
        else:
            report = {"code": os.WEXITSTATUS(status)}
        control.sendall(json.dumps(report).encode() + b"\n")


def warm_up() -> None:
    """Import and run what lessons use, so children start warm (and never compile)."""
    import numpy  # noqa: F401

    import vm
    import vm.compare
    from vm.asm import assemble  # noqa: F401
    from vm.lessons import helpers, runtime  # noqa: F401
    from vm.machine import Machine

    m = Machine()
    m.load_asm("mov ecx, 3\nagain:\nadd eax, ecx\nloop again\nhlt")
    m.run()
    m.step()
    for mode in vm.MODES:
        guest = vm.boot("syscalls", mode=mode)
        guest.run(200_000)
        guest.step()
        guest.view()
    helpers.boot_to_user("syscalls")  # (finds where user code starts, for every child)


# --------------------------------------------------------------------------- the child

GUARDED_EVENTS = frozenset(
    [
        "os.fork",
        "os.forkpty",
        "os.posix_spawn",
        "os.spawn",
        "os.exec",
        "os.system",
        "subprocess.Popen",
        "os.kill",
        "os.killpg",
        "signal.pthread_kill",
        "pty.spawn",
        "socket.__new__",
        "socket.connect",
        "socket.bind",
        "socket.sendto",
        "socket.sendmsg",
        "ctypes.dlopen",
        "ctypes.dlsym",
        "ctypes.call_function",
        "ctypes.string_at",
        "ctypes.wstring_at",
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
        "sys.settrace",
        "sys.setprofile",
        "sys._current_frames",
        "sys._current_exceptions",
        "os.remove",
        "os.rename",
        "os.replace",
        "os.rmdir",
        "os.truncate",
        "os.chmod",
        "os.chown",
        "os.link",
        "os.symlink",
        "os.mkdir",
        "os.putenv",
        "os.unsetenv",
        "os.setxattr",
        "os.removexattr",
        "shutil.rmtree",
        "shutil.copyfile",
        "shutil.copytree",
        "shutil.move",
        "webbrowser.open",
    ]
)
WRITES = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def child(sock: socket.socket, job: dict) -> None:
    """Run one job: limits, the guard, the cells, the public tests, then the hidden ones."""
    os.setsid()
    limits = Limits(**job["limits"])
    out = os.open(job["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    os.chdir(job["cwd"])
    sys.stdout = open(1, "w", buffering=1, closefd=False, encoding="utf-8")  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False, encoding="utf-8")  # noqa: SIM115
    size = int(Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (size + limits.memory, size + limits.memory))
    cpu = int(limits.seconds) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.output, limits.output))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    from vm.lessons import runtime

    reader = sock.makefile("rb")
    send = _sender(sock)
    job_part = json.loads(reader.readline())
    grading: dict[str, Any] = {"student": job_part["student"], "seed": job_part["seed"]}
    runtime.GRADING = grading
    _guard(job["deny"])
    baseline = _fingerprint()
    namespace: dict[str, Any] = {"__name__": "__main__"}
    run_test, describe = runtime.run_test, runtime.describe_error
    for cell in job_part["cells"]:
        error = _run_cell(cell["source"], cell["label"], namespace, limits, describe)
        if error:
            send({"kind": "cell", "label": cell["label"], "error": error})
    changed = _fingerprint_changes(baseline, _fingerprint())
    if changed:
        send({"kind": "tamper", "what": changed})
    # Once more, the instructor's cells only: what an answer redefined among the helpers,
    # and any test it registered or replaced, is the instructor's again.
    grading["lessons"] = []
    for cell in job_part["cells"]:
        if cell["kind"] != "solution":
            _run_cell(cell["source"], cell["label"], namespace, limits, describe)
    lessons = grading.get("lessons") or []
    if lessons:
        send({"kind": "variant", "variant": runtime.plain(lessons[0].variant)})
    tests = [t for lesson in lessons for t in lesson.tests]
    for test in tests:
        _report(send, test, _timed(lambda t=test: run_test(t), limits, describe))
    send({"kind": "public-done"})
    hidden_part = json.loads(reader.readline())
    _mute()
    seen = {id(t) for t in tests}
    for number, source in enumerate(hidden_part["hidden"]):
        _run_cell(source, f"hidden {number}", namespace, limits, describe)
    for lesson in lessons:
        for test in lesson.tests:
            if id(test) not in seen and test.hidden:
                _report(send, test, _timed(lambda t=test: run_test(t), limits, describe))
    send({"kind": "done"})
    sock.close()


def _mute() -> None:
    """Send the child's output (fds 1 and 2) to /dev/null from now on."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


def _sender(sock: socket.socket):
    sendall = sock.sendall

    def send(message: dict) -> None:
        sendall(repr(message).encode() + b"\n")

    return send


def _report(send, test, outcome) -> None:
    if isinstance(outcome, str):  # it ran out of time
        records, error = [], outcome
    else:
        records, error = outcome.records, outcome.error
    report = {
        "exercise": str(test.exercise),
        "test": str(test.name),
        "hidden": bool(test.hidden),
        "observed": [r.observed for r in records],
        "expected": [r.expected for r in records],
        "whats": [str(r.what) for r in records],
        "hints": [str(r.hint) for r in records],
        "error": error,
    }
    send({"kind": "test", "report": report})


class CellTimeout(BaseException):
    """A cell or test ran past its soft time limit."""


def _on_alarm(signum, frame):
    raise CellTimeout


def _timed(function, limits: Limits, describe):
    """function() under the soft per-cell time limit; a string when it ran out of time."""
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limits.cell_seconds)
    try:
        return function()
    except CellTimeout:
        return f"time limit: it ran longer than {limits.cell_seconds:g} s (an endless loop?)"
    except MemoryError:
        return f"it ran out of memory (the limit is {limits.memory >> 20} MiB)"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _run_cell(source: str, label: str, namespace: dict, limits: Limits, describe) -> str | None:
    """Run one cell's code; None, or one line saying what went wrong."""

    def run():
        try:
            code = compile(source, f"<cell {label}>", "exec")
        except SyntaxError as error:
            return f"syntax error on line {error.lineno}: {error.msg}"
        except (ValueError, MemoryError, RecursionError) as error:
            return f"cannot compile it ({type(error).__name__})"
        try:
            exec(code, namespace)
        except CellTimeout:
            raise
        except MemoryError:
            return f"it ran out of memory (the limit is {limits.memory >> 20} MiB)"
        except OSError as error:
            if error.errno != errno.EFBIG:
                return describe(error)
            _mute()  # what it prints from now on is dropped
            return f"output cap: it printed more than {limits.output >> 10} KiB"
        except BaseException as error:
            return describe(error)
        return None

    return _timed(run, limits, describe)


def _guard(deny: list[str]) -> None:
    """Install the audit hook that keeps submitted code in its box."""
    deny_paths = tuple(os.path.realpath(d) for d in deny)
    realpath, fspath = os.path.realpath, os.fspath

    def hook(event: str, args: tuple) -> None:
        if event in GUARDED_EVENTS:
            raise PermissionError(f"{event} is not allowed while grading")
        if event == "open":
            path, _mode, flags = args
            if isinstance(path, int) or path is None:
                return
            name = realpath(fspath(path))
            if isinstance(name, bytes):
                name = name.decode("utf-8", "replace")
            if isinstance(flags, int) and flags & WRITES and name != os.devnull:
                raise PermissionError(f"writing files is not allowed while grading ({name})")
            if isinstance(_mode, str) and any(c in _mode for c in "wax+") and name != os.devnull:
                raise PermissionError(f"writing files is not allowed while grading ({name})")
            if name.startswith("/proc/") and not name.startswith("/proc/self/stat"):
                raise PermissionError(f"reading {name} is not allowed while grading")
            for denied in deny_paths:
                if name == denied or name.startswith(denied + os.sep):
                    raise PermissionError(f"reading {name} is not allowed while grading")

    sys.addaudithook(hook)


def _fingerprint() -> dict[str, int]:
    """Identities of what the grader relies on: builtins, the vm.lessons modules, their
    classes' methods and their functions' code."""
    import builtins

    marks = {f"builtins.{k}": id(v) for k, v in vars(builtins).items()}
    for name, module in list(sys.modules.items()):
        if not name.startswith("vm.lessons") or module is None:
            continue
        for key, value in list(vars(module).items()):
            marks[f"{name}.{key}"] = id(value)
            if isinstance(value, type) and value.__module__ == name:
                for attr, member in list(vars(value).items()):
                    marks[f"{name}.{key}.{attr}"] = id(member)
                    code = getattr(member, "__code__", None)
                    if code is not None:
                        marks[f"{name}.{key}.{attr}.__code__"] = id(code)
            code = getattr(value, "__code__", None)
            if code is not None:
                marks[f"{name}.{key}.__code__"] = id(code)
    return marks


def _fingerprint_changes(before: dict[str, int], after: dict[str, int]) -> str:
    changed = sorted(k for k in before if after.get(k) != before[k])
    if "vm.lessons.runtime.GRADING" in changed:  # set by the grader itself
        changed.remove("vm.lessons.runtime.GRADING")
    return ", ".join(changed[:5])


if __name__ == "__main__":
    zygote(int(sys.argv[1]))
