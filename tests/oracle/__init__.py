"""Outside oracles for vmlab's CPU: a random program generator and a Unicorn comparison.

>>> from oracle import Oracle, generate
>>> failure = Oracle().check(generate(seed=1))   # None when Unicorn and vmlab agree
"""

from .generator import FAMILIES, Generator, Program, generate
from .runner import Failure, Oracle, assemble

__all__ = ["FAMILIES", "Failure", "Generator", "Oracle", "Program", "assemble", "generate"]
