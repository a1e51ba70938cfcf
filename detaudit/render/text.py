"""One rule for text from outside: shown as data, never obeyed as markup or terminal control.

Anything read from a run directory, a config, a model, a worker's stderr or
the environment may hold rich markup (``[link=file:///etc/passwd]``), terminal
escapes (``ESC[2J`` clears the screen, ``ESC]0;…BEL`` sets the window title) or
characters XML cannot hold. Every medium has one function here, and every
renderer uses it:

- the terminal: :func:`text` (a ``rich.text.Text``, never parsed as markup),
  and :class:`SafeConsole`, which shows every control character of the content
  it prints as an escape and prints no markup at all. It is the last line of
  defence: a field a renderer forgot still cannot reach the terminal as a control;
- HTML: :func:`html_text`;
- XML (JUnit): :func:`xml_text`, only characters XML 1.0 allows.

Control characters are shown as Python-style escapes (``\\x1b``), which marks
them as replaced; newlines and tabs are kept.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.markup import escape as _escape_markup
from rich.segment import Segment
from rich.text import Text

__all__ = ["SafeConsole", "html_text", "markup_text", "text", "to_ascii", "visible", "xml_text"]

# C0 controls but tab and newline (carriage return too: it rewrites the line), DEL and C1 (0x9b is a one-byte
# CSI on some terminals), the bidirectional overrides that reorder what is shown, lone surrogates (from
# undecodable file names) and the two non-characters XML 1.0 excludes.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff\ufffe\uffff]")

#: ASCII stand-ins for the few non-ASCII characters detaudit prints itself, for an ASCII-only output.
_ASCII = {"·": "-", "≠": "!=", "•": "*", "✗": "x", "✓": "v", "…": "...", "►": ">", "→": "->", "—": "-", "–": "-",
          "≤": "<=", "≥": ">=", "±": "+/-", "×": "x", "‘": "'", "’": "'", "“": '"', "”": '"'}


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(value: Any) -> str:
    """``str(value)`` with every control character shown as an escape (``\\x1b``), newlines and tabs kept."""
    return _CONTROL.sub(_shown, str(value))


def text(value: Any, style: str = "") -> Text:
    """Outside text for the terminal: a ``Text`` (no markup is parsed) with its control characters shown."""
    return Text(visible(value), style=style)


def markup_text(value: Any) -> str:
    """Outside text to place inside a rich markup string: markup escaped, control characters shown."""
    return _escape_markup(visible(value))


def html_text(value: Any) -> str:
    """Outside text for HTML (element content or a quoted attribute): escaped, control characters shown."""
    return html.escape(visible(value), quote=True)


def xml_text(value: Any) -> str:
    """Outside text for XML 1.0: characters XML cannot hold are shown as escapes (the XML writer escapes the rest)."""
    return visible(value)


def to_ascii(value: str) -> str:
    """``value`` in ASCII: detaudit's own symbols spelled out, anything else as a ``\\u`` escape."""
    if value.isascii():
        return value
    spelled = "".join(_ASCII.get(char, char) for char in value)
    return spelled.encode("ascii", "backslashreplace").decode("ascii")


class SafeConsole(Console):
    """A rich Console that never prints markup and shows the control characters of its content as escapes.

    Styles and rich's own cursor controls (a live progress bar) still work:
    only the text of content segments is filtered, just before it is written.
    Where the output cannot encode a character (``PYTHONIOENCODING=ascii``,
    ``LC_ALL=C``), it is written in ASCII instead of failing.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("markup", False)
        super().__init__(*args, **kwargs)

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        # rich writes every buffer through this method: the one place where all printed content passes.
        ascii_only = not _can_encode(self.encoding)
        safe = (segment if segment.control else
                Segment(to_ascii(visible(segment.text)) if ascii_only else visible(segment.text), segment.style)
                for segment in buffer)
        return super()._render_buffer(safe)


def _can_encode(encoding: str) -> bool:
    """Whether ``encoding`` holds any character (a UTF encoding); others get ASCII."""
    return encoding.lower().replace("-", "").replace("_", "").startswith("utf")
