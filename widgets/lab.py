"""Lab: the controls and the live views of one guest, laid out for a lesson.

>>> import vm
>>> lab = Lab(vm.boot("syscalls", mode="trap-emulate"))
>>> _ = lab.controls.control.step(); lab.control.guest.instructions
1
"""

from __future__ import annotations

import ipywidgets as W

from widgets.views import Controls, ExitTimeline, MachineView, PageTableView, RingView


class Lab(W.VBox):
    """Controls on top; the machine, the rings and the page walk; the exit timeline."""

    def __init__(self, guest, speed: str = "100k/s") -> None:
        self.controls = Controls(guest, speed=speed)
        self.control = self.controls.control
        self.machine = MachineView(self.control)
        self.rings = RingView(self.control)
        self.pages = PageTableView(self.control)
        self.timeline = ExitTimeline(self.control)
        side = W.VBox([self.rings, self.pages])
        super().__init__(
            [
                self.controls,
                W.HBox([self.machine, side], layout=W.Layout(flex_flow="row wrap")),
                self.timeline,
            ]
        )
