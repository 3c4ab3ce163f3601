"""Task registration on pgqueue.Queue and Task.check_args (no database)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import pgqueue
from pgqueue import ConfigurationError, InvalidJobError, UnknownTaskError
from pgqueue._queue import RESERVED_ARGUMENTS

# A DSN that is never connected to: registration and validation must not touch it.
NOWHERE = "postgresql://nobody@127.0.0.1:1/nowhere"


@pytest.fixture
def q() -> pgqueue.Queue:
    return pgqueue.Queue(NOWHERE)


def test_constructing_a_queue_does_not_resolve_or_connect() -> None:
    queue = pgqueue.Queue()  # no DSN: resolving it would start an embedded server
    assert queue._dsn is None
    assert not queue.database.opened
    assert queue.tasks == {}


def test_bare_decorator_registers_under_function_name(q: pgqueue.Queue) -> None:
    @q.task
    def resize(ctx: pgqueue.JobContext, image_id: int) -> int:
        return image_id * 2

    assert isinstance(resize, pgqueue.Task)
    assert q.tasks == {"resize": resize}
    assert q.get_task("resize") is resize
    assert resize.name == "resize"
    assert resize.queue_name == "default"
    assert resize.max_attempts == 1
    assert resize.timeout is None
    assert resize.is_async is False
    # calling the task object runs the function directly
    assert resize(None, image_id=4) == 8  # type: ignore[arg-type]


def test_decorator_with_options(q: pgqueue.Queue) -> None:
    @q.task(name="img.resize", queue="images", max_attempts=5, timeout=30, priority=7)
    async def resize(ctx: pgqueue.JobContext, image_id: int) -> dict[str, int]:
        """Resize an image."""
        return {"id": image_id}

    assert q.get_task("img.resize") is resize
    assert "resize" not in q.tasks
    assert (resize.queue_name, resize.max_attempts, resize.timeout, resize.priority) == (
        "images",
        5,
        30,
        7,
    )
    assert resize.is_async is True
    assert resize.__doc__ == "Resize an image."
    assert q.queue_names == ["images"]


def test_queue_names_default_and_sorted_unique(q: pgqueue.Queue) -> None:
    assert q.queue_names == ["default"]

    @q.task(queue="b")
    def one(ctx: Any) -> None: ...

    @q.task(queue="a")
    def two(ctx: Any) -> None: ...

    @q.task(queue="b")
    def three(ctx: Any) -> None: ...

    assert q.queue_names == ["a", "b"]


def test_duplicate_name_is_refused(q: pgqueue.Queue) -> None:
    @q.task
    def work(ctx: Any) -> None: ...

    def other(ctx: Any) -> None: ...

    with pytest.raises(ConfigurationError, match="'work' is already registered"):
        q.task(name="work")(other)
    assert q.tasks["work"] is work  # the first registration is kept


def test_same_name_on_two_queues_is_fine() -> None:
    a, b = pgqueue.Queue(NOWHERE), pgqueue.Queue(NOWHERE)

    def work(ctx: Any) -> None: ...

    a.task(work)
    b.task(work)
    assert a.get_task("work") is not b.get_task("work")


@pytest.mark.parametrize(
    "fn",
    [
        pytest.param(lambda: None, id="no-parameters"),
        pytest.param(lambda *, ctx: None, id="keyword-only"),
        pytest.param(lambda *args: None, id="var-positional"),
        pytest.param(lambda **kwargs: None, id="var-keyword"),
    ],
)
def test_first_parameter_must_be_positional(q: pgqueue.Queue, fn: Any) -> None:
    with pytest.raises(ConfigurationError, match="JobContext as its first positional"):
        q.task(name="t")(fn)
    assert q.tasks == {}


def test_positional_only_context_is_accepted(q: pgqueue.Queue) -> None:
    def fn(ctx: Any, /, x: int) -> int:
        return x

    task = q.task(fn)
    task.check_args({"x": 1})


@pytest.mark.parametrize("reserved", sorted(RESERVED_ARGUMENTS))
def test_reserved_parameter_name_is_refused(q: pgqueue.Queue, reserved: str) -> None:
    assert reserved == "conn"
    namespace: dict[str, Any] = {}
    exec(f"def uses_reserved(ctx, {reserved}=None): pass", namespace)
    with pytest.raises(ConfigurationError, match=f"parameter name '{reserved}' is reserved"):
        q.task(namespace["uses_reserved"])
    assert q.tasks == {}


def test_reserved_name_as_context_parameter_is_allowed(q: pgqueue.Queue) -> None:
    """Only the keyword arguments clash with enqueue(conn=...); the positional
    context may be called anything."""

    def fn(conn: Any, x: int) -> None: ...

    assert q.task(fn).name == "fn"


@pytest.mark.parametrize("max_attempts", [0, -1])
def test_max_attempts_below_one_is_refused(q: pgqueue.Queue, max_attempts: int) -> None:
    with pytest.raises(ConfigurationError, match="max_attempts must be an integer >= 1"):
        q.task(name="t", max_attempts=max_attempts)(lambda ctx: None)
    assert q.tasks == {}


@pytest.mark.parametrize("timeout", [0, -0.5, -10])
def test_non_positive_timeout_is_refused(q: pgqueue.Queue, timeout: float) -> None:
    with pytest.raises(ConfigurationError, match="timeout must be a positive number"):
        q.task(name="t", timeout=timeout)(lambda ctx: None)
    assert q.tasks == {}


@pytest.mark.parametrize("name", ["", "x" * 129, None, 7])
def test_bad_queue_name_is_refused(q: pgqueue.Queue, name: Any) -> None:
    with pytest.raises(ConfigurationError, match="queue name must be 1 to 128"):
        q.task(name="t", queue=name)(lambda ctx: None)
    assert q.tasks == {}


def test_queue_name_of_128_characters_is_accepted(q: pgqueue.Queue) -> None:
    task = q.task(name="t", queue="q" * 128)(lambda ctx: None)
    assert task.queue_name == "q" * 128


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"max_attempts": "3"}, id="max_attempts-str"),
        pytest.param({"max_attempts": 2.5}, id="max_attempts-float"),
        pytest.param({"max_attempts": True}, id="max_attempts-bool"),
        pytest.param({"timeout": "30"}, id="timeout-str"),
        pytest.param({"timeout": float("nan")}, id="timeout-nan"),
        pytest.param({"retry_delay": -1.0}, id="retry_delay-negative"),
    ],
)
def test_badly_typed_task_options_raise_configuration_error(
    q: pgqueue.Queue, options: dict[str, Any]
) -> None:
    with pytest.raises(ConfigurationError):
        q.task(name="t", **options)(lambda ctx: None)


def test_get_task_unknown_lists_registered(q: pgqueue.Queue) -> None:
    with pytest.raises(UnknownTaskError, match=r"unknown task 'nope' \(registered: none\)"):
        q.get_task("nope")

    @q.task
    def beta(ctx: Any) -> None: ...

    @q.task
    def alpha(ctx: Any) -> None: ...

    with pytest.raises(UnknownTaskError, match=r"registered: alpha, beta\)") as info:
        q.get_task("nope")
    assert isinstance(info.value, InvalidJobError)


# -- Task.check_args ------------------------------------------------------------------------


@pytest.fixture
def send(q: pgqueue.Queue) -> pgqueue.Task[Any]:
    @q.task
    def send(ctx: Any, to: str, subject: str = "", *, urgent: bool = False) -> None: ...

    return send


def test_check_args_accepts_matching_arguments(send: pgqueue.Task[Any]) -> None:
    send.check_args({"to": "a@example.com"})
    send.check_args({"to": "a@example.com", "subject": "hi", "urgent": True})


def test_check_args_missing_required(send: pgqueue.Task[Any]) -> None:
    with pytest.raises(InvalidJobError, match=r"task 'send': .*'to'"):
        send.check_args({})


def test_check_args_unexpected_keyword(send: pgqueue.Task[Any]) -> None:
    with pytest.raises(InvalidJobError, match=r"task 'send': .*'cc'"):
        send.check_args({"to": "x", "cc": "y"})


def test_check_args_with_var_keyword_accepts_anything(q: pgqueue.Queue) -> None:
    @q.task
    def flexible(ctx: Any, **kwargs: Any) -> None: ...

    flexible.check_args({"anything": 1, "else": [1, 2]})


def test_check_args_does_not_bind_the_context_by_name(q: pgqueue.Queue) -> None:
    """The context is positional: passing it as a keyword is an error, not a bind."""

    @q.task
    def job(ctx: Any, x: int) -> None: ...

    with pytest.raises(InvalidJobError, match="ctx"):
        job.check_args({"ctx": 1, "x": 2})


def test_options_rejects_unknown_option(send: pgqueue.Task[Any]) -> None:
    with pytest.raises(InvalidJobError, match="task 'send'"):
        send.options(colour="red")
    bound = send.options(queue="mail", priority=3)
    assert isinstance(bound, pgqueue.BoundTask)
    assert bound.opts.queue == "mail" and bound.opts.priority == 3


def test_task_signature_is_kept(send: pgqueue.Task[Any]) -> None:
    params = list(inspect.signature(send.fn).parameters)
    assert params == ["ctx", "to", "subject", "urgent"]
    assert repr(send) == "<Task 'send' queue='default'>"
