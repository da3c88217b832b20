"""A griffe extension for the API reference: doctest examples render as code.

The package's docstrings follow the Keras form, whose `Example:` holds `>>>` lines at the
docstring's own indentation; Markdown would read them as nested quotes (and `x[0]` in them as a
link). This wraps each run of `>>>` lines, with the output under them, in a `pycon` fence before
griffe parses the docstring. The docstrings themselves stay as doctest reads them.
"""

from __future__ import annotations

import griffe


def fence_doctests(text: str) -> str:
    """`text` with each doctest run (a `>>>` line to the next blank line) fenced as `pycon`."""
    lines, out, inside = text.splitlines(), [], False
    for line in lines:
        stripped = line.strip()
        if not inside and stripped.startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}```pycon")
            inside = True
        elif inside and not stripped:
            out.append(f"{indent}```")
            inside = False
        out.append(line)
    if inside:
        out.append(f"{indent}```")
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    """Fences the doctests of every object's docstring (see the module docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
