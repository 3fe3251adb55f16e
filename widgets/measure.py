"""Measure the views: start-up, running live, and memory (``python -m widgets.measure``).

    python -m widgets.measure startup   # a fresh kernel: start to the first view drawn
    python -m widgets.measure live      # guest instructions/s, frames/s, messages/s per view
    python -m widgets.measure memory --seconds 60   # the kernel's memory over a long run

Wall-clock figures for people; the tests never assert them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

START_CODE = """
import vm, widgets
guest = vm.boot("syscalls", mode="trap-emulate")
display(widgets.Lab(guest))
"""


def startup(repeats: int = 3) -> list[float]:
    """Seconds from asking for a new kernel to its first widget view displayed."""
    from jupyter_client.manager import start_new_kernel

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        manager, client = start_new_kernel(kernel_name="python3")
        try:
            msg_id = client.execute(START_CODE)
            while True:
                msg = client.get_iopub_msg(timeout=120)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                kind = msg["msg_type"]
                data = msg["content"].get("data", {})
                if kind == "display_data" and "application/vnd.jupyter.widget-view+json" in data:
                    times.append(time.perf_counter() - started)
                    break
                if kind == "error":
                    raise RuntimeError("\n".join(msg["content"]["traceback"]))
        finally:
            client.stop_channels()
            manager.shutdown_kernel(now=True)
    return times


def _views(lab) -> dict:
    return {
        "controls": lab.controls,
        "machine": lab.machine,
        "rings": lab.rings,
        "pages": lab.pages,
        "timeline": lab.timeline,
    }


async def _run_for(control, seconds: float, every: float = 0.0, sample=None) -> int:
    """Run the controller's guest at its speed for ``seconds`` (Reset whenever it ends, as
    a student would); returns the guest instructions run."""
    guest = control.guest
    deadline = time.perf_counter() + seconds
    done = 0

    async def watch():
        while time.perf_counter() < deadline:
            await asyncio.sleep(every or 0.05)
            if sample is not None:
                sample()
        control.pause()

    watcher = asyncio.get_running_loop().create_task(watch())
    while time.perf_counter() < deadline:
        before = guest.instructions
        await control.run_frames()
        done += max(0, guest.instructions - before)
        if control.done:
            control.reset()
    await watcher
    return done


def live(workload: str, mode: str, speed: str, seconds: float) -> dict:
    """Run a Lab for ``seconds`` (resetting when the guest ends) and count what it did."""
    import ipywidgets as W

    import vm
    import widgets

    guest = vm.boot(workload, mode=mode)
    lab = widgets.Lab(guest)
    control = lab.control
    control.speed = speed
    owner = {}
    for name, view in _views(lab).items():
        stack = [view]
        while stack:
            widget = stack.pop()
            owner[widget.model_id] = name
            stack.extend(getattr(widget, "children", ()))
    sent = dict.fromkeys(_views(lab), 0)
    original = W.Widget._send

    def counting(self, msg, buffers=None):
        if self.model_id in owner:
            sent[owner[self.model_id]] += 1
        return original(self, msg, buffers)

    W.Widget._send = counting
    frames0 = control.frames
    started = time.perf_counter()
    try:
        done = asyncio.run(_run_for(control, seconds))
    finally:
        W.Widget._send = original
    spent = time.perf_counter() - started
    frames = control.frames - frames0
    return {
        "workload": workload,
        "mode": mode,
        "speed": speed,
        "seconds": round(spent, 2),
        "instructions_per_second": round(done / spent),
        "frames_per_second": round(frames / spent, 1),
        "messages_per_second": {k: round(v / spent, 1) for k, v in sent.items()},
    }


def memory(seconds: float, workload: str = "all", mode: str = "trap-emulate") -> dict:
    """The process's resident memory while a Lab runs at full speed for ``seconds``,
    resetting the guest whenever it ends (as a student running it over and over)."""
    import psutil

    import vm
    import widgets

    process = psutil.Process(os.getpid())
    guest = vm.boot(workload, mode=mode)
    lab = widgets.Lab(guest)
    control = lab.control
    control.speed = "max"
    samples = []
    started = time.perf_counter()

    def sample() -> None:
        samples.append((time.perf_counter() - started, process.memory_info().rss))

    instructions = asyncio.run(_run_for(control, seconds, every=1.0, sample=sample))
    warm = [s for s in samples if s[0] >= min(10.0, seconds / 3)]
    (t0, r0), (t1, r1) = warm[0], warm[-1]
    slope = (r1 - r0) / max(1e-9, t1 - t0)
    return {
        "seconds": round(samples[-1][0], 1),
        "instructions": instructions,
        "rss_start_mib": round(samples[0][1] / 2**20, 1),
        "rss_end_mib": round(r1 / 2**20, 1),
        "rss_max_mib": round(max(r for _, r in samples) / 2**20, 1),
        "growth_mib_per_hour": round(slope * 3600 / 2**20, 1),
        "checkpoints": len(control.history.checkpoints),
        "checkpoint_mib": round(control.history.nbytes / 2**20, 1),
        "events_kept": len(guest.events),
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point: print the figures asked for."""
    parser = argparse.ArgumentParser(prog="python -m widgets.measure", description=__doc__)
    parser.add_argument("what", choices=("startup", "live", "memory", "all"))
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.what in ("startup", "all"):
        times = startup()
        print("kernel start to the first view drawn (s):", ", ".join(f"{t:.2f}" for t in times))
    if args.what in ("live", "all"):
        for workload, mode, speed in (
            ("all", "trap-emulate", "1M/s"),
            ("all", "trap-emulate", "max"),
            ("syscalls", "trap-emulate", "max"),
            ("compute", "native", "max"),
        ):
            print(live(workload, mode, speed, min(args.seconds, 8.0)))
    if args.what in ("memory", "all"):
        print(memory(args.seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
