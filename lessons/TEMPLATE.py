# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
#   vmlab:
#     lesson: 99-template
# ---

# %% [markdown]
# # Lesson 99: a title
#
# Copy this file to `lessons/NN-name.py`, change `99-template` (here, in the header and in
# every grade_id), then `jupytext --sync lessons/NN-name.py`. See lessons/AUTHORING.md.
#
# In this lesson (about 30 minutes) you will: (learning goals, 2-4 of them).

# %% tags=["setup"]
from vm.lessons import Lesson
from vm.lessons.helpers import outcome, run_asm

STUDENT = "your-student-id"  # <- your id: it picks your variant
lesson = Lesson("99-template", student=STUDENT)
check = lesson.check
NUMBER = lesson.pick("NUMBER", range(2, 100))  # each student's own value

# %% [markdown]
# ## 1. A section: read, watch, try
#
# Prose, then an experiment (a cell the grader skips: no tag, no nbgrader metadata).

# %%
print(run_asm("mov eax, 2\nadd eax, 2\nhlt").regs.eax)

# %% [markdown]
# > **In real systems.** A short box on what real hardware or a real hypervisor does,
# > with its source (a paper, a manual section).
#
# ### Exercise 99-double (2 points)
#
# Write assembly that leaves twice your `NUMBER` in EAX, then halts.

# %% nbgrader={"grade": false, "grade_id": "99-double", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
SOURCE = f"mov eax, {NUMBER}\nadd eax, eax\nhlt"
### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "99-double-check", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
@lesson.test("99-double")
def eax_is_twice_your_number(t):
    m = run_asm(SOURCE)
    t.expect(outcome(m), "HALT", "how it ended", hint="end with hlt")
    t.expect(m.regs.eax, 2 * NUMBER, "EAX", hint="add a register to itself")


### BEGIN HIDDEN TESTS
@lesson.test("99-double", hidden=True)
def nothing_else_changed(t):
    t.expect(run_asm(SOURCE).regs.edi, 0, "EDI")


### END HIDDEN TESTS

check("99-double")
