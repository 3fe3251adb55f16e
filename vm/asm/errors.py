"""Assembly errors that say what and where: file, line, column, and a caret."""

from __future__ import annotations


class AsmError(Exception):
    """A mistake in assembly source, located like a compiler's message."""

    def __init__(
        self,
        message: str,
        filename: str = "<source>",
        line: int = 0,
        column: int = 1,
        source_line: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.filename = filename
        self.line = line
        self.column = max(1, column)
        self.source_line = source_line

    def __str__(self) -> str:
        head = f"{self.filename}:{self.line}:{self.column}: error: {self.message}"
        if not self.source_line:
            return head
        text = self.source_line.rstrip("\n").expandtabs(1)
        return f"{head}\n    {text}\n    {' ' * (self.column - 1)}^"


class Location:
    """Where a logical line came from (after includes and macro expansion)."""

    __slots__ = ("filename", "line", "text")

    def __init__(self, filename: str, line: int, text: str) -> None:
        self.filename = filename
        self.line = line
        self.text = text

    def error(self, message: str, column: int = 1) -> AsmError:
        """An AsmError at this line."""
        return AsmError(message, self.filename, self.line, column, self.text)
