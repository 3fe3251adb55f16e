"""ipywidgets views of a vmlab guest and its hypervisor, for JupyterLab.

Views only: every number they show comes from the Guest interface (``vm.boot`` and
``Guest``); nothing here simulates anything. One Controller per guest drives it (steps,
runs in frames without blocking the kernel, exact Step back), and every view of that guest
follows it.

>>> import vm, widgets
>>> guest = vm.boot("syscalls", mode="trap-emulate")
>>> lab = widgets.Lab(guest)  # in a notebook: display(lab)
>>> sorted(name for name in widgets.__all__ if name.endswith("View"))
['CompareView', 'HostView', 'MachineView', 'PageTableView', 'ProcessTreeView', 'RingView']
"""

from widgets.compare import CompareView, compare_runs
from widgets.controller import Controller, Frame, controller_for
from widgets.host import HostView
from widgets.lab import Lab
from widgets.views import (
    Controls,
    ExitTimeline,
    MachineView,
    PageTableView,
    ProcessTreeView,
    RingView,
)

__all__ = [
    "CompareView",
    "Controller",
    "Controls",
    "ExitTimeline",
    "Frame",
    "HostView",
    "Lab",
    "MachineView",
    "PageTableView",
    "ProcessTreeView",
    "RingView",
    "compare_runs",
    "controller_for",
]
