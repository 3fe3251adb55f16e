"""The widgets driven from Python, without a browser: each control does what it says, Step
back is exact, a timeline pick lands on its event, views never change the guest, and a
frame is a few messages per view."""

from __future__ import annotations

import asyncio
import doctest
import hashlib
import importlib
import json
import re
import time
from html import escape

import ipywidgets as W
import pytest

import vm
import widgets
from vm.hypervisor.host import Host
from vm.hypervisor.modes import MODE_TABLE
from widgets.history import position


def boot(workload="syscalls", mode="trap-emulate", **kw):
    return vm.boot(workload, mode=mode, **kw)


def eip_shown(machine: widgets.MachineView) -> int:
    found = re.search(r'class="vmlab-eip"[^>]*>([0-9a-f]{8})<', machine.state.value)
    assert found, "the machine view shows EIP"
    return int(found.group(1), 16)


def moment(guest) -> tuple:
    """Everything a view shows of where a guest is (to compare two moments)."""
    view = guest.view()
    stats = json.dumps(guest.stats, sort_keys=True, default=str)
    return (view.registers, view.guest, view.hardware, stats, guest.console, guest.events.total)


def state_hash(guest) -> str:
    machine = guest.vm.machine
    digest = hashlib.sha256(machine.state.tobytes())
    digest.update(machine.window.tobytes())
    digest.update(json.dumps(guest.stats, sort_keys=True, default=str).encode())
    return digest.hexdigest()


@pytest.mark.parametrize(
    "name",
    [
        "widgets",
        "widgets.history",
        "widgets.controller",
        "widgets.render",
        "widgets.views",
        "widgets.compare",
        "widgets.host",
        "widgets.lab",
    ],
)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("mode", vm.MODES)
def test_every_mode_shows_in_every_view_with_no_change_to_them(mode):
    # A mode the views never heard of (paravirt came after them) draws like the others:
    # its own ring roles, its own events, its CPU state, a page walk.
    guest = boot("spawn", mode)
    lab = widgets.Lab(guest)
    lab.control.step_n(300)
    lab.control.run_until()
    lab.control.refresh()
    for ring, role in guest.rings:
        assert escape(role) in lab.rings.picture.value, (ring, role)
    assert f"Rings in {mode}" in lab.rings.picture.value
    assert eip_shown(lab.machine) == guest.view().eip
    assert f"{guest.view().eip:08x}" in lab.pages.walk.value
    if MODE_TABLE[mode].vmm_area:  # (a VMM, so events: not bare metal or containers)
        assert (
            guest.events.total > 0 and escape(guest.events[-1].kind) in lab.timeline.picture.value
        )
    else:
        assert mode in ("native", "containers") and guest.events.total == 0

    guest = boot()
    controls = widgets.Controls(guest)
    machine = widgets.MachineView(guest)
    assert eip_shown(machine) == guest.view().eip
    for _ in range(5):
        before, eip = guest.instructions, guest.view().eip
        controls.step_button.click()
        # one instruction: run by the CPU, or emulated by the VMM (lgdt at ring 1)
        assert guest.instructions == before + 1 or guest.events[-1].action == "emulate"
        assert guest.view().eip != eip
        assert eip_shown(machine) == guest.view().eip
    assert "vmlab-status" in controls.status.value
    assert f"{guest.instructions:,} instructions" in controls.status.value


def test_a_changed_register_is_highlighted_and_an_unchanged_one_is_not():
    guest = boot("compute", mode="native")
    machine = widgets.MachineView(guest)
    controls = widgets.Controls(guest)
    controls.step_button.click()  # mov esp, 0x9000
    cells = dict(re.findall(r'class="vmlab-(\w+)"( style="[^"]*")?', machine.state.value))
    assert "ffe08a" in cells["esp"] and "ffe08a" in cells["eip"]
    assert cells["ebx"] == ""


def test_run_then_pause_stops_within_one_frame():
    guest = boot("compute", mode="native")
    control = widgets.controller_for(guest)
    control.speed = "max"
    period = 1 / control.frame_rate

    async def scenario():
        task = asyncio.get_running_loop().create_task(control.run_frames())
        await asyncio.sleep(0.35)
        assert control.running and guest.instructions > 0
        paused_at = time.perf_counter()
        control.pause()
        at_pause = guest.instructions
        await task
        return time.perf_counter() - paused_at, at_pause

    took, at_pause = asyncio.run(scenario())
    assert took < period, f"pause took {took:.3f} s, a frame is {period:.3f} s"
    assert guest.instructions == at_pause  # not one more instruction after Pause
    assert not control.running and guest.status == "budget"


def test_step_back_returns_to_the_exact_earlier_state_across_exits():
    guest = boot()
    guest.run(30_000)
    control = widgets.controller_for(guest)
    machine = widgets.MachineView(control)
    seen = []
    events_before = guest.events.total
    for _ in range(120):
        seen.append(moment(guest))
        control.step()
    assert guest.events.total - events_before >= 5, "the steps went through exits"
    for expected in reversed(seen):
        assert control.step_back()
        assert moment(guest) == expected
        assert eip_shown(machine) == expected[0]["eip"]


def test_step_back_after_a_run_goes_to_the_step_before_the_pause():
    guest = boot()
    control = widgets.controller_for(guest)
    control.speed = "100k/s"
    asyncio.run(control.run_frames(frames=3))
    here = position(guest)
    before_back = moment(guest)
    assert control.step_back()
    assert position(guest) < here
    guest.step()
    assert position(guest) >= here  # the step from there reaches (or passes) the pause
    if position(guest) == here:
        assert moment(guest) == before_back


def test_step_back_at_the_first_state_stays_there():
    guest = boot()
    control = widgets.controller_for(guest)
    start = moment(guest)
    assert not control.step_back()
    assert moment(guest) == start


def test_reset_goes_back_to_the_first_state_and_keeps_breakpoints():
    guest = boot()
    start = moment(guest)
    control = widgets.controller_for(guest)
    control.step_n(50)
    control.toggle_breakpoint(0x1005)
    control.reset()
    assert moment(guest) == start
    assert guest.breakpoints == [0x1005]


def test_a_timeline_pick_lands_on_that_event_and_shows_its_instruction():
    guest = boot()
    timeline = widgets.ExitTimeline(guest)
    machine = widgets.MachineView(guest)
    guest.run(60_000)
    timeline.control.refresh()
    options = dict((seq, label) for label, seq in timeline.events_list.options)
    seq = sorted(options)[len(options) // 2]
    timeline.events_list.value = seq  # the click
    assert guest.events.total > seq and any(e.seq == seq for e in guest.events.since(seq))
    fresh = boot()
    fresh.run_until(seq=seq)
    assert moment(guest) == moment(fresh)
    assert f"event {seq}:" in timeline.detail.value
    assert eip_shown(machine) == guest.view().eip
    # and it goes on from there exactly as the fresh guest does
    assert guest.run().stats == fresh.run().stats


def test_the_timeline_counts_kinds_and_cycles_charged():
    guest = boot()
    timeline = widgets.ExitTimeline(guest)
    guest.run()
    timeline.control.refresh()
    html = timeline.picture.value
    assert "INT 0x80" in html and "2,008" in html
    charged = sum(e.cost for e in guest.events if e.kind == "INT 0x80")
    assert f"{charged:,}" in html


def test_rings_show_who_runs_where_and_the_transitions():
    guest = boot()
    rings = widgets.RingView(guest)
    assert "0: VMM" in rings.picture.value and "1: guest kernel" in rings.picture.value
    guest.run_until("INT 0x80")
    rings.control.refresh()
    assert "INT 0x80: reflect" in rings.picture.value and "reflect" in rings.picture.value
    native = widgets.RingView(boot(mode="native"))
    assert "VMM" not in native.picture.value and "0: guest kernel" in native.picture.value


def test_page_walk_goes_through_guest_and_shadow_tables_and_highlights_changes():
    guest = boot("pagetable")
    pages = widgets.PageTableView(guest, follow="address", address=0x400000)
    guest.run_until("INT 0x80")
    pages.control.refresh()
    html = pages.walk.value
    for table in ("guest directory", "guest table", "shadow directory", "shadow table"):
        assert table in html
    assert ">P<" in html and "host index" in html
    # a shadow fill changes the shadow entries the walk shows: they are highlighted
    pages.follow.value = "cr2"
    guest.run_until("shadow fill")
    pages.control.refresh()
    assert "ffe08a" in pages.walk.value


def test_views_never_change_the_guest():
    guest = boot("spawn")
    guest.run(50_000)
    before = state_hash(guest)
    lab = widgets.Lab(guest)
    lab.machine.follow.value = "address"
    lab.machine.address.value = "0x400000"
    lab.pages.follow.value = "cr2"
    lab.timeline.kind.value = "#PF"
    for _ in range(3):
        lab.control.refresh()
    assert state_hash(guest) == before


def test_breakpoints_toggle_from_the_disassembly_and_stop_a_run():
    guest = boot(mode="native")
    machine = widgets.MachineView(guest)
    target = machine.disassembly.options[-1][1]
    machine.disassembly.value = target
    assert machine.toggle_breakpoint()
    assert guest.breakpoints == [target]
    assert any(label.startswith("●") for label, _ in machine.disassembly.options)
    control = machine.control
    asyncio.run(control.run_frames(frames=50))
    assert guest.status == "breakpoint" and guest.view().eip == target
    assert machine.toggle_breakpoint(target) is False and guest.breakpoints == []


def test_run_to_the_next_event_of_a_kind():
    guest = boot()
    control = widgets.controller_for(guest)
    result = control.run_until("INT 0x80")
    assert result.status == "stopped" and guest.events[-1].kind == "INT 0x80"
    total = guest.events.total
    control.run_until()
    assert guest.events.total == total + 1
    asyncio.run(control.run_frames(frames=20, kinds=("#GP",)))
    assert guest.events[-1].kind == "#GP" or guest.events[-1].action == "#GP"


def count_messages(views, frames, run):
    """Messages sent per view over some frames (wrapping Widget._send)."""
    owner = {}
    for name, view in views.items():
        stack = [view]
        while stack:
            widget = stack.pop()
            owner[widget.model_id] = name
            stack.extend(getattr(widget, "children", ()))
    counts = dict.fromkeys(views, 0)
    original = W.Widget._send

    def counting(self, msg, buffers=None):
        if self.model_id in owner:
            counts[owner[self.model_id]] += 1
        return original(self, msg, buffers)

    W.Widget._send = counting
    try:
        run(frames)
    finally:
        W.Widget._send = original
    return counts


def test_a_frame_is_at_most_two_messages_per_view():
    guest = boot("all")
    lab = widgets.Lab(guest)
    lab.control.speed = "1M/s"  # (at "max" the guest may end before the frames are done)
    views = {
        "controls": lab.controls,
        "machine": lab.machine,
        "rings": lab.rings,
        "pages": lab.pages,
        "timeline": lab.timeline,
    }
    frames = 12
    counts = count_messages(views, frames, lambda n: asyncio.run(lab.control.run_frames(n)))
    assert lab.control.frames >= frames
    for name, n in counts.items():
        assert n <= 2 * (frames + 1), (name, n)


def test_history_and_events_stay_bounded():
    guest = boot("all")
    control = widgets.controller_for(guest)
    control.history.spacing = 20_000  # (many checkpoints in a short run)
    control.speed = "max"
    asyncio.run(control.run_frames(frames=15))
    history = control.history
    assert len(history.checkpoints) <= history.limit + 1
    assert history.nbytes < 64 << 20
    assert len(guest.events) <= 10_000


def test_compare_view_matches_the_runs_and_caches_them(monkeypatch):
    view = widgets.CompareView(workloads=["syscalls", "spawn"], preset="pentium4")
    golden = json.loads((__import__("pathlib").Path(__file__).parent / "golden.json").read_text())
    row = widgets.compare_runs("pentium4", ["syscalls"])[("syscalls", "trap-emulate")]
    assert f"{row['cycles']:,}" in view.numbers.value
    expected = json.dumps(golden).find(str(row["cycles"]))
    assert expected >= 0, "the chart's figures are the golden file's"
    monkeypatch.setattr(vm, "boot", lambda *a, **k: pytest.fail("ran again: not cached"))
    view.metric.value = "exits"
    view.log_scale.value = False
    assert "exits per workload" in view.chart.value


def test_compare_view_picks_a_cost_preset():
    view = widgets.CompareView(workloads=["syscalls"], preset="pentium4")
    p4 = widgets.compare_runs("pentium4", ["syscalls"])[("syscalls", "trap-emulate")]["cycles"]
    view.preset.value = "haswell"
    hw = widgets.compare_runs("haswell", ["syscalls"])[("syscalls", "trap-emulate")]["cycles"]
    assert hw < p4 and f"{hw:,}" in view.numbers.value


def test_host_view_colours_memory_by_owner_and_runs_guests_side_by_side():
    host = Host(16 << 20)
    a = vm.boot("syscalls", "trap-emulate", host=host, name="a")
    b = vm.boot("io", "native", host=host, name="b")
    view = widgets.HostView(host, slice_budget=5_000)
    regions = widgets.host.regions(host)
    assert [r[3] for r in regions] == ["a: syscalls", "a's VMM", "b: io"]
    assert regions[0][:2] == (a.vm.machine.cpu.mem_base, a.vm.guest_ram)
    assert regions[2][0] == b.vm.machine.cpu.mem_base
    asyncio.run(view.run_frames(frames=100))
    assert a.status == b.status == "shutdown"
    alone = vm.boot("syscalls", "trap-emulate").run()
    assert a.stats["cycles"] == alone.stats["cycles"]
    assert "shutdown" in view.progress.value
    view.reset()
    assert a.instructions == b.instructions == 0
