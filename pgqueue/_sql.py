"""Loads the SQL shipped in the ``pgqueue.sql`` package (the repository's ``sql/``)."""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import LiteralString, cast

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def read(filename: str) -> str:
    """Return the text of one file of ``sql/`` (``schema.sql``, ``functions.sql``...)."""
    return resources.files("pgqueue.sql").joinpath(filename).read_text(encoding="utf-8")


@functools.cache
def queries() -> dict[str, LiteralString]:
    """The named queries of ``sql/queries.sql``: ``-- name: NAME`` starts each one."""
    text = read("queries.sql")
    parts = _NAME.split(text)
    found: dict[str, LiteralString] = {}
    # parts = [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        # The files are part of the package, not user input: safe to treat as literal.
        found[name] = cast(LiteralString, body.strip())
    return found


def query(name: str) -> LiteralString:
    """One named query; ``KeyError`` names the missing query."""
    try:
        return queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in sql/queries.sql") from None


def install_script() -> str:
    """The whole current schema: tables and types, then the stored functions."""
    return read("schema.sql") + "\n" + read("functions.sql")
