"""File names that are not valid UTF-8: escaped as text in tables and CSVs, exact when a file is opened.

On Linux such a name reaches Python as a string with surrogate escapes (`'caf\\udce9.jpg'` for the Latin-1 byte
0xE9). pandas keeps text in Arrow, which rejects those strings, and CSV readers expect UTF-8; so names enter
tables through `as_text`, which writes each undecodable byte as `\\xe9` (what Python's backslashreplace shows),
and `file_in` turns such text back into the exact name before a file is opened.
"""

from __future__ import annotations

import re
from pathlib import Path

_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes 0x80-0xFF that os.fsdecode could not decode
_ESCAPED = re.compile(r"\\x([89a-f][0-9a-f])")


def as_text(name: str | Path) -> str:
    """`name` as valid Unicode: each byte that was not UTF-8 becomes `\\xHH`; any other name is unchanged."""
    return _UNDECODABLE.sub(lambda match: f"\\x{ord(match.group()) - 0xDC00:02x}", str(name))


def from_text(text: str) -> str:
    """The name `as_text` made `text` from (with surrogate escapes, which `open` turns back into the bytes)."""
    return _ESCAPED.sub(lambda match: chr(0xDC00 + int(match.group(1), 16)), text)


def file_in(root: Path | None, text: str | Path) -> Path:
    """The file a table's `text` names, relative to `root` unless absolute.

    Each part is read back with `from_text`, except a part whose name really holds a backslash-x sequence:
    where only the part as written exists, it is kept as written.
    """
    path = Path(text)
    current = Path(root) if root is not None and not path.is_absolute() else Path(path.anchor)
    for part in path.parts[1:] if path.is_absolute() else path.parts:
        exact, written = current / from_text(part), current / part
        current = written if exact != written and not exact.exists() and written.exists() else exact
    return current
