"""HTML and SVG for the views: pure functions from what the guest shows to markup.

Nothing here touches a guest: each function takes values (a GuestView, events, numbers)
and returns a string, so the pictures are tested without a browser.

>>> flags_text(0x246)
'IF ZF PF'
>>> pte_bits(0x67)
['P', 'RW', 'US', 'A', 'D']
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

MONO = "font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px"
CHANGED = "background: #ffe08a"  # a value that changed since the last frame
DIFFERS = "background: #ffd0d0"  # the guest believes otherwise than the hardware holds
REGISTERS = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", "eip", "eflags")
FLAGS = ((11, "OF"), (10, "DF"), (9, "IF"), (8, "TF"), (7, "SF"), (6, "ZF"), (4, "AF"), (2, "PF"))
FLAGS += ((0, "CF"),)
PTE_BITS = ((0, "P"), (1, "RW"), (2, "US"), (5, "A"), (6, "D"))
KIND_COLOURS = {
    "#GP": "#e8710a",
    "#PF": "#1a73e8",
    "INT 0x80": "#188038",
    "IRQ 0": "#9334e6",
    "inject": "#d01884",
    "INT3": "#8d6e63",
    "callout": "#12b5cb",
    "patch": "#9aa0a6",
    "timer": "#5f6368",
    "stop": "#d93025",
    "hang": "#d93025",
    "HLT": "#795548",
}
PALETTE = ("#f9ab00", "#a142f4", "#24c1e0", "#ff6d01", "#46bdc6", "#7baaf7", "#c58af9")
MODE_COLOURS = ("#5f6368", "#e8710a", "#1a73e8", "#188038", "#9334e6", "#d01884")
OWNER_COLOURS = ("#1a73e8", "#188038", "#e8710a", "#9334e6", "#d01884", "#12b5cb", "#795548")

STYLE = """<style>
.vmlab-mono select, .vmlab-mono textarea { font-family: ui-monospace, SFMono-Regular, Menlo,
  Consolas, monospace !important; font-size: 12px !important; }
.vmlab table.vmlab-t { border-collapse: collapse; }
.vmlab table.vmlab-t td, .vmlab table.vmlab-t th { padding: 0 6px; text-align: left; }
.vmlab .widget-html-content { line-height: 1.35; }
.vmlab h4 { margin: 4px 0; }
</style>"""


def esc(text: object) -> str:
    """Text made safe for HTML."""
    return html.escape(str(text), quote=True)


def kind_colour(kind: str) -> str:
    """The colour of an event kind (the same in every view)."""
    if kind in KIND_COLOURS:
        return KIND_COLOURS[kind]
    return PALETTE[sum(kind.encode()) % len(PALETTE)]


def flags_text(eflags: int) -> str:
    """The set flags of EFLAGS, named (IF ZF ...); IOPL when it is not 0."""
    names = [name for bit, name in FLAGS if eflags >> bit & 1]
    iopl = eflags >> 12 & 3
    if iopl:
        names.append(f"IOPL={iopl}")
    return " ".join(names) or "-"


def pte_bits(entry: int) -> list[str]:
    """The bits of a page-table entry that are set, named (P RW US A D)."""
    return [name for bit, name in PTE_BITS if entry >= 0 and entry >> bit & 1]


def table(rows: Iterable[Sequence[str]], head: Sequence[str] = (), style: str = "") -> str:
    """An HTML table from rows of cells that are already HTML."""
    out = [f'<table class="vmlab-t" style="{MONO}; line-height: 1.35; {style}">']
    if head:
        out.append("<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    out.append("</table>")
    return "".join(out)


def registers_html(registers: dict, previous: dict | None) -> str:
    """The general registers, EIP and EFLAGS; those that changed since ``previous``
    highlighted. EIP's value carries the class vmlab-eip (tests find it in the page)."""
    rows = []
    for name in REGISTERS:
        value = registers[name]
        changed = previous is not None and previous.get(name) != value
        style = f' style="{CHANGED}"' if changed else ""
        extra = f" ({flags_text(value)})" if name == "eflags" else ""
        cls = f"vmlab-{name}"
        rows.append(
            (name.upper(), f'<span class="{cls}"{style} title="{value}">{value:08x}</span>{extra}')
        )
    return table(rows)


STATE_ROWS = (
    ("CPL", "cpl", "{}"),
    ("IF", "interrupts", "{}"),
    ("CR0", "cr0", "{:08x}"),
    ("CR2", "cr2", "{:08x}"),
    ("CR3", "cr3", "{:08x}"),
    ("CS", "cs", "{:04x}"),
    ("SS", "ss", "{:04x}"),
    ("GDTR", "gdtr", "{0[0]:08x}/{0[1]:x}"),
    ("IDTR", "idtr", "{0[0]:08x}/{0[1]:x}"),
    ("TR", "tr", "{:04x}"),
)


def beliefs_html(guest_state, hardware_state) -> str:
    """CPL, IF, control registers and selectors: what the guest believes beside what the
    hardware holds, rows that differ highlighted."""
    rows = []
    for label, field, fmt in STATE_ROWS:
        believed = getattr(guest_state, field)
        held = getattr(hardware_state, field)
        style = f' style="{DIFFERS}"' if believed != held else ""
        rows.append(
            (
                label,
                f"<span{style}>{esc(fmt.format(believed))}</span>",
                f"<span{style}>{esc(fmt.format(held))}</span>",
            )
        )
    return table(rows, ("", "guest believes", "hardware holds"))


def vmcs_html(vmcs) -> str:
    """The control structure of a guest in VMX non-root mode (vm.cpu.vmcs.VMCS): what
    exits, the CR0 mask and shadow, nested paging, and the last exit's information."""
    on = [name.removesuffix("_exiting").replace("_", " ") for name in EXIT_CONTROLS
          if getattr(vmcs, name)]  # fmt: skip
    vectors = ", ".join(f"#{v}" for v in vmcs.exceptions_exiting()) or "none"
    nested = f"on, root {vmcs.nested_root:08x}" if vmcs.nested_paging else "off (shadow paging)"
    rows = [
        ("exits on", esc(", ".join(on) or "nothing")),
        ("exception bitmap", esc(vectors)),
        ("CR0 mask / shadow", f"{vmcs.cr0_guest_host_mask:08x} / {vmcs.cr0_read_shadow:08x}"),
        ("nested paging", esc(nested)),
        ("inject at entry", esc(vmcs.entry_interruption)),
        ("last exit", esc(vmcs.exit_reason)),
        ("qualification", f"{vmcs.exit_qualification:08x}"),
        ("instruction length", str(vmcs.exit_instruction_length)),
        ("guest linear / physical", f"{vmcs.guest_linear:08x} / {vmcs.guest_physical:08x}"),
        ("IDT vectoring", esc(vmcs.idt_vectoring)),
    ]
    return "<b>VMCS</b>" + table(rows, ("", "control structure"))


EXIT_CONTROLS = (
    "external_interrupt_exiting",
    "hlt_exiting",
    "unconditional_io_exiting",
    "cpuid_exiting",
    "cr3_load_exiting",
    "cr3_store_exiting",
    "invlpg_exiting",
    "vmcall_exiting",
    "interrupt_window_exiting",
)


def hexdump_html(address: int, data: bytes, rows: int = 8, mark: int | None = None) -> str:
    """Bytes as a hex dump from ``address``, 16 a row; bytes the guest cannot see as '..'."""
    lines = []
    for row in range(rows):
        start = address + 16 * row
        chunk = data[16 * row : 16 * row + 16]
        cells = []
        for i in range(16):
            if i < len(chunk):
                cell = f"{chunk[i]:02x}"
                if mark is not None and start + i == mark:
                    cell = f'<b style="{CHANGED}">{cell}</b>'
            else:
                cell = ".."
            cells.append(cell)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{start & 0xFFFFFFFF:08x}  {' '.join(cells)}  {esc(text)}")
    return f'<pre style="{MONO}; margin: 0">' + "\n".join(lines) + "</pre>"


def console_html(text: str, lines: int = 10) -> str:
    """The last lines the guest printed."""
    tail = "\n".join(text.splitlines()[-lines:]) if text else "(nothing printed yet)"
    return (
        f'<pre style="{MONO}; margin: 0; background: #202124; color: #e8eaed; '
        f'padding: 4px; min-height: 3em; white-space: pre-wrap">{esc(tail)}</pre>'
    )


# ---- rings ------------------------------------------------------------------------------------
RING_RADII = (36, 72, 108, 144)
CENTRE = 190


def _polar(radius: float, angle: float) -> tuple[float, float]:
    rad = math.radians(angle)
    return CENTRE + radius * math.cos(rad), CENTRE + radius * math.sin(rad)


def _radius(ring: int) -> float:
    """The middle of a ring's band."""
    return (RING_RADII[ring] + (RING_RADII[ring - 1] if ring else 0)) / 2


def ring_move(
    hops: Sequence[tuple[int, int]], angle: float, colour: str, label: str, opacity: float
) -> str:
    """One transition (hops from ring to ring, such as user -> VMM -> kernel) drawn as
    arrows side by side along one angle, labelled outside the rings."""
    parts = [f'<g opacity="{opacity:.2f}">']
    for i, (a, b) in enumerate(hops):
        shift = (i - (len(hops) - 1) / 2) * 9
        x0, y0 = _polar(_radius(a), angle + shift)
        x1, y1 = _polar(_radius(b), angle + shift)
        parts.append(
            f'<line x1="{x0:.1f}" y1="{y0:.1f}" x2="{x1:.1f}" y2="{y1:.1f}" stroke="{colour}" '
            f'stroke-width="3" marker-end="url(#vmlab-head)"/>'
        )
    tx, ty = _polar(RING_RADII[3] + 8, angle)
    anchor = "start" if math.cos(math.radians(angle)) > 0.2 else "end"
    if abs(math.cos(math.radians(angle))) <= 0.2:
        anchor = "middle"
        ty += 10 if math.sin(math.radians(angle)) > 0 else -2
    parts.append(
        f'<text x="{tx:.1f}" y="{ty + 3:.1f}" font-size="11" fill="{colour}" '
        f'text-anchor="{anchor}">{esc(label)}</text></g>'
    )
    return "".join(parts)


def rings_svg(
    roles: dict[int, str],
    hardware_ring: int,
    believed_ring: int,
    moves: Sequence[tuple[Sequence[tuple[int, int]], str, str]],
) -> str:
    """Rings 0 (inside) to 3 (outside), each named by who runs there, the CPU's ring
    filled; ``moves`` (hops, colour, label), the newest last and boldest."""
    size = 2 * CENTRE
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size + 120}" height="{size}" '
        f'viewBox="-60 0 {size + 120} {size}" class="vmlab-rings">',
        '<defs><marker id="vmlab-head" viewBox="0 0 10 10" refX="8" refY="5" '
        'markerWidth="4" markerHeight="4" orient="auto-start-reverse">'
        '<path d="M 0 0 L 10 5 L 0 10 z" fill="context-stroke"/></marker></defs>',
    ]
    for ring in (3, 2, 1, 0):
        used = ring in roles
        fill = "#fde293" if ring == hardware_ring else ("#e8f0fe" if used else "#f1f3f4")
        parts.append(
            f'<circle cx="{CENTRE}" cy="{CENTRE}" r="{RING_RADII[ring]}" fill="{fill}" '
            f'stroke="#5f6368" stroke-width="1"/>'
        )
    for ring in (3, 2, 1, 0):
        y = CENTRE - RING_RADII[ring] + 13 if ring else CENTRE + 4
        role = roles.get(ring, "")
        parts.append(
            f'<text x="{CENTRE}" y="{y}" font-size="11" text-anchor="middle" fill="#202124" '
            f'font-weight="bold">{ring}{": " + esc(role) if role else ""}</text>'
        )
    n = len(moves)
    for i, (hops, colour, label) in enumerate(moves):
        angle = 15 + i * 150 / max(1, n - 1) if n > 1 else 90
        parts.append(ring_move(hops, angle, colour, label, 0.3 + 0.7 * (i + 1) / n))
    parts.append(
        f'<text x="{CENTRE}" y="14" font-size="11" text-anchor="middle" fill="#202124">'
        f"the CPU is at ring {hardware_ring}; the guest believes ring {believed_ring}</text>"
        "</svg>"
    )
    return "".join(parts)


# ---- timeline ---------------------------------------------------------------------------------
def timeline_svg(events: Sequence, selected: int | None, width: int = 640) -> str:
    """One mark per event (the last ones given), coloured by kind, placed by cycle; the
    selected event (a seq) outlined."""
    height = 46
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'class="vmlab-timeline" style="background:#f8f9fa">'
    ]
    if events:
        first, last = events[0].cycle, events[-1].cycle
        span = max(1, last - first)
        for event in events:
            x = 4 + (width - 8) * (event.cycle - first) / span
            colour = kind_colour(event.kind)
            outline = ' stroke="#000" stroke-width="2"' if event.seq == selected else ""
            parts.append(
                f'<rect x="{x:.1f}" y="6" width="2.5" height="{height - 18}" fill="{colour}"'
                f"{outline}><title>{esc(str(event))}</title></rect>"
            )
        parts.append(
            f'<text x="4" y="{height - 2}" font-size="9" fill="#5f6368">cycle {first:,}</text>'
            f'<text x="{width - 4}" y="{height - 2}" font-size="9" fill="#5f6368" '
            f'text-anchor="end">cycle {last:,}</text>'
        )
    else:
        parts.append('<text x="8" y="26" font-size="12" fill="#5f6368">no events yet</text>')
    parts.append("</svg>")
    return "".join(parts)


def legend_html(counts: dict[str, int], cycles: dict[str, int]) -> str:
    """Counts per kind and the cycles each kind was charged, with its colour."""
    rows = []
    for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        swatch = f'<span style="color:{kind_colour(kind)}">&#9632;</span>'
        rows.append((f"{swatch} {esc(kind)}", f"{n:,}", f"{cycles.get(kind, 0):,}"))
    return table(rows, ("kind", "events", "cycles charged"))


# ---- page tables ------------------------------------------------------------------------------
def walk_html(translation, changed: set[int], view_mode: str = "") -> str:
    """A translation's steps, each entry with its bits decoded; entries in ``changed``
    (their addresses) highlighted."""
    rows = []
    for step in translation.steps:
        value = step.value
        shown = "outside memory" if value < 0 else f"{value:08x}"
        bits = " ".join(
            f'<b style="color:#188038">{b}</b>'
            if b in pte_bits(value)
            else f'<span style="color:#bdc1c6">{b}</span>'
            for _, b in PTE_BITS
        )
        frame = f"{value & ~0xFFF & 0xFFFFFFFF:08x}" if value >= 0 else "-"
        style = CHANGED if step.address in changed else ""
        rows.append(
            (
                f'<span style="{style}">{esc(step.table)}</span>',
                f"[{step.index}] at {step.address:08x}",
                f'<span style="{style}">{shown}</span>',
                bits,
                frame,
            )
        )
    out = table(rows, ("table", "entry", "value", "bits", "frame"))
    physical = f"{translation.physical:08x}" if translation.physical >= 0 else "not mapped"
    host = f"{translation.host:08x}" if translation.host >= 0 else "none"
    out += (
        f'<div style="{MONO}">linear {translation.linear:08x} &rarr; guest-physical {physical}'
        f" &rarr; host index {host}</div>"
    )
    if translation.why:
        out += f'<div style="{MONO}; color:#d93025">{esc(translation.why)}</div>'
    return out


# ---- charts -----------------------------------------------------------------------------------
def bar_chart_svg(
    groups: Sequence[str],
    series: Sequence[str],
    values: dict[tuple[str, str], float],
    title: str,
    log: bool = True,
    width: int = 640,
) -> str:
    """Grouped bars: one group per ``groups`` item, one bar per ``series`` item, heights
    from values[(group, series)] (log scale when ``log``)."""
    height, top, bottom, left = 240, 24, 40, 56
    plot_h = height - top - bottom
    shown = [v for v in values.values() if v and v > 0]
    vmax = max(shown, default=1)
    vmin = min(shown, default=1)
    if log:
        lo = 10 ** math.floor(math.log10(max(vmin, 1e-9)))
        hi = 10 ** math.ceil(math.log10(vmax)) if vmax > lo else lo * 10

        def scale(v: float) -> float:
            if v <= 0:
                return 0.0
            return (
                plot_h
                * (math.log10(max(v, lo)) - math.log10(lo))
                / (math.log10(hi) - math.log10(lo))
            )

        ticks = [10**e for e in range(int(math.log10(lo)), int(math.log10(hi)) + 1)]
    else:
        hi = vmax * 1.1

        def scale(v: float) -> float:
            return plot_h * v / hi if hi else 0.0

        ticks = [hi * i / 4 for i in range(5)]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'class="vmlab-chart"><text x="{left}" y="14" font-size="12" font-weight="bold">'
        f"{esc(title)}{' (log scale)' if log else ''}</text>"
    ]
    for tick in ticks:
        y = top + plot_h - scale(tick)
        parts.append(
            f'<line x1="{left}" x2="{width - 4}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e0e0e0"/>'
            f'<text x="{left - 4}" y="{y + 3:.1f}" font-size="9" text-anchor="end">'
            f"{_short(tick)}</text>"
        )
    group_w = (width - left - 8) / max(1, len(groups))
    bar_w = max(2.0, (group_w - 12) / max(1, len(series)))
    for g, group in enumerate(groups):
        x0 = left + g * group_w + 6
        for s, name in enumerate(series):
            v = values.get((group, name))
            if v is None:
                continue
            h = scale(v)
            colour = MODE_COLOURS[s % len(MODE_COLOURS)]
            parts.append(
                f'<rect x="{x0 + s * bar_w:.1f}" y="{top + plot_h - h:.1f}" '
                f'width="{bar_w - 1:.1f}" height="{h:.1f}" fill="{colour}">'
                f"<title>{esc(group)} {esc(name)}: {v:,.0f}</title></rect>"
            )
        parts.append(
            f'<text x="{x0 + group_w / 2 - 6:.1f}" y="{height - bottom + 14}" font-size="10" '
            f'text-anchor="middle">{esc(group)}</text>'
        )
    for s, name in enumerate(series):
        colour = MODE_COLOURS[s % len(MODE_COLOURS)]
        x = left + s * 150
        parts.append(
            f'<rect x="{x}" y="{height - 14}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + 14}" y="{height - 5}" font-size="10">{esc(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _short(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:g}{unit}"
    return f"{value:g}"


# ---- host memory ------------------------------------------------------------------------------
def memory_strip_svg(
    size: int, regions: Sequence[tuple[int, int, str, str]], width: int = 640
) -> str:
    """A host's physical memory as a strip: regions (start, length, colour, label);
    everything else free."""
    height = 54
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'class="vmlab-host"><rect x="0" y="4" width="{width}" height="26" fill="#e8eaed"/>'
    ]
    for start, length, colour, label in regions:
        x = width * start / size
        w = max(1.0, width * length / size)
        parts.append(
            f'<rect x="{x:.1f}" y="4" width="{w:.1f}" height="26" fill="{colour}" '
            f'stroke="#fff"><title>{esc(label)}: {start:#x}..{start + length:#x}</title></rect>'
        )
        if w > 40:
            parts.append(
                f'<text x="{x + 3:.1f}" y="21" font-size="10" fill="#fff">{esc(label)}</text>'
            )
    parts.append(
        f'<text x="0" y="44" font-size="9">0</text><text x="{width}" y="44" font-size="9" '
        f'text-anchor="end">{size >> 20} MiB</text></svg>'
    )
    return "".join(parts)
