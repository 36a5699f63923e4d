"""One-line, actionable errors for bad input.

Every user-facing failure raises :class:`ConfigError` naming the option to fix and how. The training entry point
prints it as a single line (no traceback wall) and exits with status 2, before anything is written.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad option value or an unreachable input, reported as one line naming the option and the fix."""

    def __init__(self, option: str, problem: str, fix: str | None = None) -> None:
        self.option = option
        self.problem = problem
        self.fix = fix
        text = f"{option}: {problem}"
        if fix:
            text += f" -> {fix}"
        super().__init__(text)

    def one_line(self) -> str:
        """The message as printed to the user: `error: <option>: <problem> -> <fix>`."""
        return "error: " + str(self).replace("\n", " ")
