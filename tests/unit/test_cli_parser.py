"""The command-line parser (no database: nothing here runs a command)."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

import pytest

from pgqueue import cli
from pgqueue.errors import ConfigurationError

CONTRACT_COMMANDS = ["migrate", "worker", "enqueue", "jobs", "queues", "demo", "serve", "token"]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_help_lists_every_contract_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: pgqueue")
    for name in CONTRACT_COMMANDS:
        assert re.search(rf"^\s+{name}\s", out, re.MULTILINE), f"{name} missing from --help"


def test_main_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    assert "migrate" in capsys.readouterr().out


def test_jobs_subcommands() -> None:
    jobs = _subcommands(cli.build_parser())["jobs"]
    assert set(_subcommands(jobs)) == {"list", "show", "retry", "cancel", "progress"}


def test_batches_subcommands() -> None:
    batches = _subcommands(cli.build_parser())["batches"]
    assert set(_subcommands(batches)) == {"list", "create", "show", "pause", "resume", "cancel"}


@pytest.mark.parametrize(
    "argv",
    [
        ["migrate", "--json"],
        ["enqueue", "send", "--json"],
        ["jobs", "list", "--json"],
        ["jobs", "show", "3", "--json"],
        ["jobs", "retry", "3", "--json"],
        ["jobs", "cancel", "3", "--json"],
        ["queues", "--json"],
        ["jobs", "progress", "3", "--json"],
        ["batches", "list", "--json"],
        ["batches", "show", "3", "--json"],
        ["batches", "create", "t", "--items", "[]", "--json"],
        ["batches", "pause", "3", "--json"],
        ["batches", "resume", "3", "--json"],
        ["batches", "cancel", "3", "--json"],
        ["prune", "--json"],
    ],
)
def test_reporting_commands_take_json(argv: list[str]) -> None:
    args = cli.build_parser().parse_args(argv)
    assert args.json is True
    assert callable(args.handler)


def test_worker_options() -> None:
    args = cli.build_parser().parse_args(
        ["worker", "--app", "m:q", "--queues", "a,b", "--concurrency", "3", "--until-idle"]
    )
    assert (args.app, args.queues, args.concurrency, args.until_idle) == ("m:q", "a,b", 3, True)
    assert args.handler is cli.cmd_worker


def test_enqueue_options() -> None:
    args = cli.build_parser().parse_args(
        ["enqueue", "send", "--args", '{"to": "x"}', "--queue", "mail", "--priority", "5"]
    )
    assert (args.task, args.args, args.queue, args.priority) == ("send", '{"to": "x"}', "mail", 5)


def test_queues_pause_and_resume() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["queues"]).action == "list"
    args = parser.parse_args(["queues", "pause", "images"])
    assert (args.action, args.name) == ("pause", "images")
    assert parser.parse_args(["queues", "resume", "images"]).action == "resume"


def test_global_dsn_option() -> None:
    args = cli.build_parser().parse_args(["--dsn", "postgresql://x@h/db", "migrate"])
    assert args.dsn == "postgresql://x@h/db"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["no-such-command"],
        ["jobs"],
        ["jobs", "show", "not-a-number"],
        ["worker", "--concurrency", "many"],
        ["queues", "explode"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("pgqueue: error: ")
    assert err.count("\n") == 1, f"usage errors are one line: {err!r}"
    assert "--help" in err


def test_malformed_dsn_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    """main() rejects a malformed --dsn before connecting anywhere."""
    code = cli.main(["--dsn", "not a dsn", "migrate"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("pgqueue: error: malformed PostgreSQL DSN")


def test_load_app_errors_are_configuration_errors() -> None:
    from pgqueue import ConfigurationError

    with pytest.raises(ConfigurationError, match="--app MODULE:QUEUE"):
        cli.load_app(None)
    with pytest.raises(ConfigurationError, match="must look like MODULE:QUEUE"):
        cli.load_app("no_colon")
    with pytest.raises(ConfigurationError, match="cannot import app module"):
        cli.load_app("pgqueue_no_such_module_xyz:queue")
    with pytest.raises(ConfigurationError, match=r"is not a pgqueue\.Queue"):
        cli.load_app("pgqueue:__version__")


def test_worker_loop_option_defaults_to_auto_and_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = ["worker", "--app", "m:q"]
    monkeypatch.delenv("PGQUEUE_LOOP", raising=False)
    assert cli.build_parser().parse_args(worker).loop == "auto"
    monkeypatch.setenv("PGQUEUE_LOOP", "asyncio")
    assert cli.build_parser().parse_args(worker).loop == "asyncio"
    assert cli.build_parser().parse_args([*worker, "--loop", "uvloop"]).loop == "uvloop"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([*worker, "--loop", "trio"])


def test_loop_factory_picks_uvloop_when_installed_and_asyncio_when_asked() -> None:
    uvloop = pytest.importorskip("uvloop")
    assert cli.loop_factory("auto") is uvloop.new_event_loop
    assert cli.loop_factory("uvloop") is uvloop.new_event_loop
    assert cli.loop_factory("asyncio") is None


def test_loop_factory_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    assert cli.loop_factory("auto") is None
    with pytest.raises(ConfigurationError, match=r"^--loop uvloop: uvloop is not installed"):
        cli.loop_factory("uvloop")
    with pytest.raises(ConfigurationError, match=r"must be one of auto, uvloop, asyncio, not 'x'"):
        cli.loop_factory("x")


@pytest.mark.parametrize(
    ("parse", "text"),
    [
        (lambda text: cli._parse_json_object(text, "--args"), "[" * 100_000),
        (cli._parse_items, "[" * 100_000),
        (cli._parse_items, '{"a": 1}\n' + "[" * 100_000),
    ],
)
def test_json_nested_too_deeply_is_one_clear_error(parse: Any, text: str) -> None:
    with pytest.raises(cli.CommandError, match="nested too deeply"):
        parse(text)


def test_worker_options_come_from_the_settings_with_their_defaults() -> None:
    import dataclasses

    from pgqueue import WorkerSettings

    args = cli.build_parser().parse_args(["worker", "--app", "m:q"])
    flagged = [f for f in dataclasses.fields(WorkerSettings) if "flag" in f.metadata]
    assert len(flagged) >= 15
    defaults = WorkerSettings()
    for field in flagged:
        assert getattr(args, field.name) == getattr(defaults, field.name), field.name
    args = cli.build_parser().parse_args(
        ["worker", "--app", "m:q", "--no-listen", "--max-memory", "512", "--metrics-port", "9"]
    )
    assert (args.listen, args.max_memory_mb, args.metrics_port) == (False, 512.0, 9)
