"""The live views of one guest: controls, the machine, the rings, the exits, the page tables.

Each view is an ipywidgets box made from a guest (or its Controller) and works alone or in
a ``Lab``; every view of one guest shares that guest's Controller, so one set of controls
moves them all. A view only reads the guest (its ``view()``, ``events``, ``stats``) and
redraws once per frame, each widget inside ``hold_sync``: a frame is at most two messages
per view.

>>> import vm, widgets
>>> guest = vm.boot("syscalls", mode="trap-emulate")
>>> machine = widgets.MachineView(guest)
>>> controls = widgets.Controls(guest)
>>> _ = controls.control.step()
>>> "vmlab-eip" in machine.state.value
True
"""

from __future__ import annotations

from collections import Counter, deque

import ipywidgets as W

from widgets import render as R
from widgets.controller import SPEEDS, Controller, Frame, controller_for

RUN_TO = (
    "next event",
    "#GP",
    "#PF",
    "INT 0x80",
    "IRQ 0",
    "inject",
    "INT3",
    "callout",
    "reflect",
    "emulate",
    "shadow fill",
    "shadow write",
)


def _set(widget: W.Widget, **traits: object) -> None:
    """Change a widget's traits that differ, as one message."""
    changed = {k: v for k, v in traits.items() if getattr(widget, k) != v}
    if changed:
        with widget.hold_sync():
            for key, value in changed.items():
                setattr(widget, key, value)


class _View(W.VBox):
    """A view of one guest: made from a guest or its Controller, redrawn every frame."""

    def __init__(self, guest, children: list[W.Widget], **kwargs: object) -> None:
        super().__init__([W.HTML(R.STYLE), *children], **kwargs)
        self.add_class("vmlab")
        self.control: Controller = controller_for(guest)
        self.guest = self.control.guest

    def _start(self) -> None:
        self.control.attach(self)

    def redraw(self) -> None:
        """Draw again now (after a setting of the view changed)."""
        self.update(self.control._frame(peek=True))

    def update(self, frame: Frame) -> None:  # (each view draws itself)
        raise NotImplementedError


# ---- controls ---------------------------------------------------------------------------------
class Controls(_View):
    """Step, Step N, Run / Pause, Step back, Reset, Run to the next event (of a kind), and
    the speed; a line says where the guest is.

    >>> import vm
    >>> controls = Controls(vm.boot("syscalls", mode="native"))
    >>> controls.step_button.click(); controls.control.guest.instructions
    1
    """

    def __init__(self, guest, speed: str = "1M/s") -> None:
        button = dict(layout=W.Layout(width="auto"))
        self.step_button = W.Button(description="Step", icon="step-forward", **button)
        self.step_n_button = W.Button(description="Step N", **button)
        self.n = W.BoundedIntText(value=100, min=1, max=10_000, layout=W.Layout(width="90px"))
        self.run_button = W.Button(description="Run", icon="play", button_style="success", **button)
        self.back_button = W.Button(description="Step back", icon="step-backward", **button)
        self.reset_button = W.Button(description="Reset", icon="undo", **button)
        self.until_button = W.Button(description="Run to", icon="fast-forward", **button)
        self.until_kind = W.Dropdown(
            options=RUN_TO, value="next event", layout=W.Layout(width="130px")
        )
        self.speed = W.Dropdown(
            options=list(SPEEDS), value=speed, description="speed", layout=W.Layout(width="170px")
        )
        self.status = W.HTML()
        row = W.HBox(
            [
                self.step_button,
                self.step_n_button,
                self.n,
                self.run_button,
                self.back_button,
                self.reset_button,
                self.until_button,
                self.until_kind,
                self.speed,
            ],
            layout=W.Layout(flex_flow="row wrap"),
        )
        super().__init__(guest, [row, self.status])
        self.control.speed = speed
        self.step_button.on_click(lambda _: self.control.step())
        self.step_n_button.on_click(lambda _: self.control.step_n(self.n.value))
        self.run_button.on_click(lambda _: self.toggle_run())
        self.back_button.on_click(lambda _: self.control.step_back())
        self.reset_button.on_click(lambda _: self.control.reset())
        self.until_button.on_click(lambda _: self.run_to())
        self.speed.observe(self._speed, names="value")
        self.control.listeners.append(self._running_changed)
        self._start()

    def _speed(self, change: dict) -> None:
        self.control.speed = change["new"]

    def toggle_run(self) -> None:
        """Run if paused, pause if running."""
        if self.control.running:
            self.control.pause()
        else:
            self.control.play()

    def run_to(self) -> None:
        """Run (in frames) to the next event of the chosen kind."""
        kind = self.until_kind.value
        self.control.play(kinds=() if kind == "next event" else (kind,))

    def _running_changed(self, control: Controller) -> None:
        if control.running:
            _set(self.run_button, description="Pause", icon="pause", button_style="warning")
        else:
            _set(self.run_button, description="Run", icon="play", button_style="success")

    def update(self, frame: Frame) -> None:
        guest, view = frame.guest, frame.view
        state = "running" if frame.running else guest.status
        text = (
            f"<b>{R.esc(guest.mode)}</b> · {R.esc(guest.workload)} · {R.esc(state)} · "
            f"{view.instructions:,} instructions · {view.cycles:,} cycles · "
            f"{guest.events.total:,} events"
        )
        if frame.message:
            text += f" · <i>{R.esc(frame.message)}</i>"
        _set(self.status, value=f'<span style="{R.MONO}" class="vmlab-status">{text}</span>')


# ---- the machine ------------------------------------------------------------------------------
FOLLOW = ("esp", "eip", "eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "cr2", "address")


class MachineView(_View):
    """Registers and flags (changed ones highlighted), CPL and IF as the guest believes
    them beside the hardware's, the mode, the disassembly around EIP with breakpoints to
    toggle, memory that follows an address or a register, and the console.

    >>> import vm
    >>> view = MachineView(vm.boot("syscalls", mode="trap-emulate"))
    >>> "guest believes" in view.state.value
    True
    """

    def __init__(self, guest, follow: str = "esp", address: int = 0) -> None:
        self.state = W.HTML(layout=W.Layout(min_width="560px"))
        self.disassembly = W.Select(rows=14, layout=W.Layout(width="470px"))
        self.disassembly.add_class("vmlab-mono")
        self.breakpoint_button = W.Button(
            description="Toggle breakpoint", icon="circle", layout=W.Layout(width="auto")
        )
        self.follow = W.Dropdown(
            options=FOLLOW, value=follow, description="memory at", layout=W.Layout(width="190px")
        )
        self.address = W.Text(value=f"{address:#x}", layout=W.Layout(width="120px"))
        right = W.VBox(
            [
                self.disassembly,
                W.HBox([self.breakpoint_button, self.follow, self.address]),
            ]
        )
        super().__init__(guest, [W.HBox([self.state, right])])
        self.breakpoint_button.on_click(lambda _: self.toggle_breakpoint())
        self.follow.observe(lambda _: self.redraw(), names="value")
        self.address.observe(lambda _: self.redraw(), names="value")
        self._symbols = {a: n for n, a in self.guest.kernel_symbols.items()}
        self._symbols.update({a: n for n, a in self.guest.user_symbols.items()})
        self._start()

    def toggle_breakpoint(self, address: int | None = None) -> bool:
        """Set or clear a breakpoint at address (default: the selected line)."""
        if address is None:
            address = self.disassembly.value
        if address is None:
            address = self.guest.view().eip
        return self.control.toggle_breakpoint(address)

    def memory_address(self, view) -> int:
        """The address the memory dump shows: a register's value or the typed address."""
        follow = self.follow.value
        if follow == "address":
            try:
                return int(self.address.value, 0) & 0xFFFFFFFF
            except ValueError:
                return 0
        if follow == "cr2":
            return view.guest.cr2
        return view.registers[follow]

    def update(self, frame: Frame) -> None:
        guest, view = frame.guest, frame.view
        previous = frame.previous.registers if frame.previous is not None else None
        status = "running" if frame.running else guest.status
        header = (
            f'<h4>{R.esc(guest.name)}: {R.esc(guest.workload)} in <span class="vmlab-mode">'
            f"{R.esc(guest.mode)}</span> · {R.esc(status)}</h4>"
            f'<div style="{R.MONO}">{view.instructions:,} instructions · '
            f"{view.cycles:,} cycles</div>"
        )
        at = self.memory_address(view) & ~0xF
        memory = R.hexdump_html(at, view.read(at, 128), mark=self.memory_address(view))
        html = (
            header
            + R.registers_html(view.registers, previous)
            + R.beliefs_html(view.guest, view.hardware)
            + (R.vmcs_html(view.vmcs) if view.vmcs is not None else "")
            + f"<b>memory at {at:08x}</b> ({R.esc(self.follow.value)})"
            + memory
            + "<b>console</b>"
            + R.console_html(guest.console, 6)
        )
        _set(self.state, value=html)
        breakpoints = set(guest.breakpoints)
        options = []
        for line in view.disassemble(before=5, after=8):
            mark = "●" if line.address in breakpoints else " "
            here = "▶" if line.current else " "
            name = self._symbols.get(line.address)
            label = f"{mark}{here} {line.address:08x}  {line.code.hex():<14.14} {line.text}"
            if name:
                label += f"   ; {name}"
            options.append((label, line.address))
        with self.disassembly.hold_sync():
            if tuple(options) != tuple(self.disassembly.options):
                self.disassembly.options = options
            if self.disassembly.value != view.eip and view.eip in dict(options).values():
                self.disassembly.value = view.eip


# ---- the rings --------------------------------------------------------------------------------
def role_rings(rings) -> tuple[dict[int, str], int | None, int, int]:
    """From Guest.rings: (role by ring, the VMM's ring or None, the guest kernel's ring,
    the guest user's ring)."""
    roles = dict(rings)
    vmm = next((r for r, n in roles.items() if "VMM" in n or "hypervisor" in n.lower()), None)
    kernel = next((r for r, n in roles.items() if "kernel" in n), 0)
    user = next((r for r, n in roles.items() if "user" in n), 3)
    return roles, vmm, kernel, user


def transitions(event, rings) -> list[tuple[int, int, str]]:
    """The ring transitions one event stands for: (from ring, to ring, what)."""
    _, vmm, kernel, user = role_rings(rings)
    here = user if event.cpl == 3 else kernel
    action = event.action
    if vmm is None:
        return []
    if event.kind == "callout":
        return [(here, vmm, "callout"), (vmm, here, "back")]
    if action == "reflect":
        return [(here, vmm, "trap"), (vmm, kernel, "reflect")]
    if action == "inject":
        return [(vmm, kernel, "inject")]
    if action.startswith("emulate"):
        return [(here, vmm, "trap"), (vmm, here, "emulate")]
    if action.startswith("shadow") or action == "tick":
        return [(here, vmm, "trap"), (vmm, here, action)]
    return []


def move_label(event, hops: list[tuple[int, int, str]]) -> str:
    """How a transition is labelled: the exit and what the VMM did ("#GP: emulate")."""
    if event.kind in ("inject", "callout"):
        return f"{event.kind}: {event.text.split(' at ')[0]}"[:34]
    return f"{event.kind}: {hops[-1][2]}"


class RingView(_View):
    """Rings 0-3 as a picture: who runs where in this mode (from ``guest.rings``) and each
    transition as it happens: system calls, traps to the VMM, emulation, reflection,
    injection and returns.

    >>> import vm
    >>> view = RingView(vm.boot("syscalls", mode="trap-emulate"))
    >>> "VMM" in view.picture.value
    True
    """

    def __init__(self, guest, keep: int = 6) -> None:
        self.picture = W.HTML()
        super().__init__(guest, [self.picture])
        self.moves: deque = deque(maxlen=keep)
        self.counts: Counter = Counter()
        self._recount()
        self._start()

    def _count(self, event) -> list[tuple[int, int, str]]:
        hops = transitions(event, self.guest.rings)
        for _, _, what in hops:
            self.counts[what] += 1
        return hops

    def _recount(self) -> None:
        self.counts = Counter()
        for event in self.guest.events:
            self._count(event)

    def update(self, frame: Frame) -> None:
        guest, view = frame.guest, frame.view
        roles, _, kernel, user = role_rings(guest.rings)
        if frame.jumped:
            self.moves.clear()
            self._recount()
        for event in frame.events:
            hops = self._count(event)
            if hops:
                self.moves.append(
                    (
                        [(a, b) for a, b, _ in hops],
                        R.kind_colour(event.kind),
                        move_label(event, hops),
                    )
                )
        if frame.previous is not None:  # what no event says: the guest's own ring changes
            before, now = frame.previous.guest.cpl, view.guest.cpl
            if before == 3 and now != 3 and not frame.events:
                self.moves.append(([(user, kernel)], "#00796b", "system call / interrupt"))
                self.counts["system call / interrupt"] += 1
            elif before != 3 and now == 3:
                self.moves.append(([(kernel, user)], "#00796b", "return to user (IRET)"))
                self.counts["return to user"] += 1
        svg = R.rings_svg(roles, view.hardware.cpl, view.guest.cpl, list(self.moves))
        counts = R.table(sorted(self.counts.items(), key=lambda kv: -kv[1]), ("transition", "n"))
        html = (
            f"<h4>Rings in {R.esc(guest.mode)}</h4>"
            f'<div style="display:flex; gap:12px; align-items:flex-start">{svg}'
            f'<div style="{R.MONO}">{counts}</div></div>'
        )
        _set(self.picture, value=html)


# ---- the exits --------------------------------------------------------------------------------
class ExitTimeline(_View):
    """One mark per event, coloured by kind; counts and cycles charged per kind; pick an
    event in the list and the machine goes to that moment (a snapshot before it, then
    replay) and shows its instruction.

    >>> import vm
    >>> guest = vm.boot("syscalls", mode="trap-emulate")
    >>> timeline = ExitTimeline(guest)
    >>> _ = guest.run(5_000); timeline.control.refresh().events != []
    True
    """

    def __init__(self, guest, marks: int = 300, listed: int = 60) -> None:
        self.marks, self.listed = marks, listed
        self.picture = W.HTML()
        self.kind = W.Dropdown(options=["all"], value="all", description="kind")
        self.events_list = W.Select(rows=10, layout=W.Layout(width="98%"))
        self.events_list.add_class("vmlab-mono")
        self.detail = W.HTML()
        super().__init__(guest, [self.picture, self.kind, self.events_list, self.detail])
        self.selected: int | None = None
        self._drawing = False
        self.events_list.observe(self._picked, names="value")
        self.kind.observe(lambda _: self.redraw(), names="value")
        self._start()

    def _picked(self, change: dict) -> None:
        if self._drawing or change["new"] is None:
            return
        self.goto(change["new"])

    def goto(self, seq: int) -> bool:
        """Take the machine to the moment event ``seq`` was recorded."""
        self.selected = seq
        went = self.control.goto_event(seq)
        self._describe(seq, went)
        return went

    def _describe(self, seq: int, went: bool) -> None:
        guest = self.guest
        if not went:
            _set(self.detail, value=f"<i>event {seq} cannot be reached from here</i>")
            return
        event = next((e for e in guest.events.since(seq) if e.seq == seq), None)
        if event is None:
            return
        from vm.asm.disasm import disassemble_one

        view = guest.view()
        code = view.read(event.eip, 15)
        instruction = disassemble_one(code, event.eip) if code else "(not mapped)"
        _set(
            self.detail,
            value=(
                f'<div style="{R.MONO}" class="vmlab-event">event {event.seq}: '
                f'<b style="color:{R.kind_colour(event.kind)}">{R.esc(event.kind)}</b> at '
                f"{event.eip:08x} <b>{R.esc(instruction)}</b> (ring {event.cpl}) &rarr; "
                f"{R.esc(event.action)}, {event.cost:,} cycles: {R.esc(event.text)}</div>"
            ),
        )

    def update(self, frame: Frame) -> None:
        guest = frame.guest
        records = guest.events.records  # (read only: the tuples the log keeps)
        counts: Counter = Counter()
        cycles: Counter = Counter()
        for record in records:
            counts[record[3]] += 1
            cycles[record[3]] += record[7]
        kind = self.kind.value
        kinds = ["all", *sorted(counts)]
        recent = list(guest.events)[-self.marks * 4 :] if kind != "all" else None
        if kind == "all":
            tail = [guest.events[i] for i in range(max(0, len(records) - self.marks), len(records))]
        else:
            tail = [e for e in recent if e.kind == kind][-self.marks :]
        svg = R.timeline_svg(tail, self.selected)
        html = (
            f"<h4>Events ({guest.events.total:,} in all, {len(records):,} kept)</h4>"
            + svg
            + R.legend_html(dict(counts), dict(cycles))
        )
        self._drawing = True
        try:
            _set(self.picture, value=html)
            with self.kind.hold_sync():
                if list(self.kind.options) != kinds:
                    self.kind.options = kinds if kind in kinds else [*kinds, kind]
                    self.kind.value = kind
            listed = tail[-self.listed :]
            options = [(str(e), e.seq) for e in listed]
            with self.events_list.hold_sync():
                if tuple(options) != tuple(self.events_list.options):
                    self.events_list.options = options
                wanted = self.selected if self.selected in {o[1] for o in options} else None
                if self.events_list.value != wanted:
                    self.events_list.value = wanted
        finally:
            self._drawing = False


# ---- the page tables --------------------------------------------------------------------------
class PageTableView(_View):
    """A virtual address walked through the guest's page tables to guest-physical, then
    through the shadow tables to the host's frame (``view.translate``), each entry with its
    bits decoded; entries that changed since the last frame highlighted.

    >>> import vm
    >>> guest = vm.boot("spawn", mode="trap-emulate")
    >>> _ = guest.run_until("#PF"); _ = guest.run(20_000)
    >>> "shadow directory" in PageTableView(guest, follow="eip").walk.value
    True
    """

    def __init__(self, guest, follow: str = "eip", address: int = 0x400000) -> None:
        self.follow = W.Dropdown(
            options=("eip", "esp", "cr2", "address"), value=follow, description="walk"
        )
        self.address = W.Text(value=f"{address:#x}", layout=W.Layout(width="120px"))
        self.walk = W.HTML()
        super().__init__(guest, [W.HBox([self.follow, self.address]), self.walk])
        self._entries: dict[int, int] = {}
        self.follow.observe(lambda _: self.redraw(), names="value")
        self.address.observe(lambda _: self.redraw(), names="value")
        self._start()

    def linear(self, view) -> int:
        follow = self.follow.value
        if follow == "address":
            try:
                return int(self.address.value, 0) & 0xFFFFFFFF
            except ValueError:
                return 0
        if follow == "cr2":
            return view.guest.cr2
        return view.registers[follow]

    def update(self, frame: Frame) -> None:
        view = frame.view
        translation = view.translate(self.linear(view))
        entries = {step.address: step.value for step in translation.steps}
        changed = set()
        if not frame.jumped:
            changed = {
                a for a, v in entries.items() if a in self._entries and self._entries[a] != v
            }
            changed |= {a for a in entries if self._entries and a not in self._entries}
        self._entries = entries
        last = frame.guest.events[-1] if len(frame.guest.events) else None
        note = f"last event: {R.esc(str(last))}" if last is not None else "no events yet"
        html = (
            f"<h4>Page walk of {translation.linear:08x} ({R.esc(self.follow.value)})</h4>"
            + R.walk_html(translation, changed)
            + f'<div style="{R.MONO}; color:#5f6368">{note}</div>'
        )
        _set(self.walk, value=html)


# ---- the process tree per namespace ---------------------------------------------------------
def process_tree_html(namespace, console: str, lines: int) -> str:
    """One namespace: a line about it, its processes as a tree, its console's last lines."""
    children: dict[int, list] = {}
    for process in namespace.processes:
        children.setdefault(process.parent, []).append(process)
    pids = {p.pid for p in namespace.processes}
    rows: list[str] = []

    def walk(parent: int, depth: int) -> None:
        for process in sorted(children.get(parent, ()), key=lambda p: p.pid):
            if len(rows) >= 64:  # (a bound: a namespace holds at most the kernel's slots)
                return
            mark = " &lt;- on the CPU" if process.current else ""
            style = "font-weight: bold" if process.current else ""
            rows.append(
                f'<div style="{style}">{"&nbsp;" * 4 * depth}pid {process.pid} '
                f"({R.esc(process.state)}; kernel pid {process.host_pid}){mark}</div>"
            )
            walk(process.pid, depth + 1)

    walk(0, 0)
    for process in namespace.processes:  # (orphans: their parent has gone)
        if process.parent and process.parent not in pids:
            rows.append(f"<div>pid {process.pid} ({R.esc(process.state)}; orphan)</div>")
    if namespace.id == 0:
        title = "the machine's one namespace (no containers)"
    else:
        limit = f"{namespace.memory_limit:,}" if namespace.memory_limit else "no limit"
        title = (
            f"container {namespace.id} &middot; {R.esc(namespace.hostname)} &middot; "
            f"{R.esc(namespace.state)} &middot; weight {namespace.weight} &middot; "
            f"{namespace.pages:,} pages ({limit}) &middot; {namespace.ticks:,} ticks"
        )
    tree = "".join(rows) or "<div>(no processes)</div>"
    return (
        f'<div style="border: 1px solid #dadce0; padding: 4px; margin: 2px; min-width: 260px">'
        f"<b>{title}</b>"
        f'<div style="{R.MONO}">{tree}</div>{R.console_html(console, lines)}</div>'
    )


class ProcessTreeView(_View):
    """The process tree of each namespace over one kernel: every container with its host
    name, state, weight, memory and ticks, its processes by pid (as the container sees
    them, and the kernel's own number), and its own console (``Guest.namespaces()`` and
    ``Guest.consoles``). Without containers, the machine is one namespace.

    >>> import vm
    >>> guest = vm.boot(mode="containers", containers=["spawn", "io"])
    >>> _ = guest.run(30_000)
    >>> html = ProcessTreeView(guest).trees.value
    >>> "container 2" in html and "pid 1" in html
    True
    """

    def __init__(self, guest, lines: int = 4) -> None:
        self.lines = lines
        self.trees = W.HTML()
        super().__init__(guest, [self.trees])
        self._start()

    def update(self, frame: Frame) -> None:
        guest = frame.guest
        consoles = guest.consoles
        boxes = [
            process_tree_html(n, consoles.get(n.id, ""), self.lines) for n in guest.namespaces()
        ]
        kernel = f"one kernel: toyos ({R.esc(guest.kernel)} build), {R.esc(guest.mode)} mode"
        html = (
            f"<h4>Processes per namespace</h4><div>{kernel}</div>"
            f'<div style="display: flex; flex-wrap: wrap">{"".join(boxes)}</div>'
        )
        _set(self.trees, value=html)
