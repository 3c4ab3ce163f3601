"""Task.check_args: its fast path (two set operations, for bulk enqueues)
accepts exactly what ``inspect.Signature.bind`` accepts."""

from __future__ import annotations

import inspect
import itertools
from typing import Any

import pytest

import pgqueue


def plain(ctx: Any, a: int, b: int = 2) -> None: ...
def keyword_only(ctx: Any, *, a: int, b: int = 2) -> None: ...
def var_keyword(ctx: Any, a: int, **rest: Any) -> None: ...
def var_positional(ctx: Any, *items: Any, a: int = 1) -> None: ...
def positional_only(ctx: Any, a: int, /, b: int = 2) -> None: ...
def positional_only_default(ctx: Any, a: int = 1, /, b: int = 2) -> None: ...
def no_arguments(ctx: Any) -> None: ...
def var_keyword_only(ctx: Any, **rest: Any) -> None: ...


FUNCTIONS = [
    plain,
    keyword_only,
    var_keyword,
    var_positional,
    positional_only,
    positional_only_default,
    no_arguments,
    var_keyword_only,
]
NAMES = ["a", "b", "c", "ctx", "items", "rest"]
ARG_SETS = [dict.fromkeys(combo, 1) for n in range(4) for combo in itertools.combinations(NAMES, n)]


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda f: f.__name__)
def test_fast_check_agrees_with_signature_bind(fn: Any) -> None:
    queue = pgqueue.Queue("postgresql://unused")
    task = queue.task(fn)
    signature = inspect.signature(fn)
    for args in ARG_SETS:
        try:
            signature.bind(None, **args)
            expected = True
        except TypeError:
            expected = False
        try:
            task.check_args(args)
            accepted = True
        except pgqueue.InvalidJobError as exc:
            accepted = False
            assert f"task {task.name!r}" in str(exc)
        assert accepted is expected, (fn.__name__, args)
