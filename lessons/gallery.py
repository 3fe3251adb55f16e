# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # vmlab gallery: every view
#
# Each cell shows one view of a guest, for instructors to copy into a lesson. Run the cells
# in order, then press **Step** or **Run** in the controls: every view of the same guest
# follows them. Nothing here changes what a guest does; the views only watch it.
#
# The first run of a fresh machine compiles the CPU core (about 30 s); after that a kernel
# starts and draws its first view in a few seconds.

# %%
import vm
import widgets
from vm.hypervisor.host import Host

guest = vm.boot("syscalls", mode="trap-emulate")
print(guest, "rings:", guest.rings)

# %% [markdown]
# ## Controls
# Step, Step N, Run / Pause, Step back (exact: snapshots and replay), Reset, Run to the next
# event (or the next event of a kind), and the speed in guest instructions per second.

# %%
widgets.Controls(guest, speed="10k/s")

# %% [markdown]
# ## MachineView
# Registers and flags (what changed is highlighted), CPL and IF as the guest believes them
# beside what the hardware holds, the disassembly around EIP (pick a line, then **Toggle
# breakpoint**), memory that follows a register or an address, and the console.

# %%
widgets.MachineView(guest)

# %% [markdown]
# ## RingView
# Who runs at which ring in this mode (`guest.rings`), and each transition as it happens:
# a trap to the VMM, its emulation or reflection, an injected interrupt, a return.

# %%
widgets.RingView(guest)

# %% [markdown]
# ## ExitTimeline
# One mark per event, coloured by kind, with counts and the cycles each kind cost. Pick an
# event in the list: the machine goes back to that moment and shows its instruction.

# %%
widgets.ExitTimeline(guest)

# %% [markdown]
# ## PageTableView
# An address walked through the guest's page tables to guest-physical, then through the
# VMM's shadow tables to the host's memory; entries that changed are highlighted.

# %%
widgets.PageTableView(guest, follow="eip")

# %% [markdown]
# ## Lab: everything for one guest
# The composite a lesson usually shows, here for binary translation.

# %%
widgets.Lab(vm.boot("spawn", mode="binary-translation"))

# %% [markdown]
# ## CompareView
# `python -m vm run --compare` as a chart: cycles and exits per mode and workload under a
# cost preset (the runs are deterministic and cached).

# %%
widgets.CompareView(workloads=["syscalls", "spawn", "pagetable", "compute"])

# %% [markdown]
# ## HostView
# Several guests on one host: its memory coloured by owner, and each guest's progress.

# %%
host = Host(32 << 20)
for i, (workload, mode) in enumerate(
    [("syscalls", "trap-emulate"), ("spawn", "binary-translation"), ("io", "native")]
):
    vm.boot(workload, mode, host=host, name=f"vm{i}")
widgets.HostView(host)
