"""Bad input on the ``eeipu`` command line: exit code 2 and one line on stderr, no traceback.

Each case runs the real console entry point in a subprocess; the help of every sub-command
names the default of each option that has one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.cli import build_parser, main, shows_default
from tests.api._server import ROOT, free_port

KEY = "0123456789abcdef0123456789abcdef"


def _eeipu(
    *argv: str, cwd: Path, timeout: float = 120, **popen: Any
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["EEIPU_HOME"] = str(cwd / "home")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("EEIPU_DB", None)
    env.pop("EEIPU_CACHE", None)
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
        **popen,
    )


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "error" in lines[0]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("not a cache")
    (tmp_path / "cache").mkdir()
    return tmp_path


UNREACHABLE_PG = "postgresql://nobody@127.0.0.1:1/eeipu"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (
            ["tune", "synthetic-3stage", "--budget", "5", "--no-progress", "--db", "garbage"],
            "garbage",
        ),
        (["worker", "--db", "garbage"], "garbage"),
        (["worker", "--db", ""], "--db"),
        (["worker", "--study", "-3"], "--study"),
        (["studies", "list", "--db", "garbage"], "garbage"),
        (["studies", "show", "1", "--db", "garbage"], "garbage"),
        (["studies", "best", "0"], "study id"),
        (["cache", "rm", "--study", "1", "--db", "garbage", "--cache", "cache"], "garbage"),
        (["serve", "--db", "garbage", "--port", "1"], "garbage"),
        (["serve", "--db", "", "--port", "1"], "--db"),
        (["serve", "--db", UNREACHABLE_PG, "--port", "1"], "127.0.0.1"),
        (["run", "synthetic-3stage", "--random", "--cache", "a-file"], "not a directory"),
        (["run", "json:dumps", "--random", "--cache", "cache"], "json:dumps"),
        (["cache", "ls", "--cache", "missing/"], "no cache at"),
        (["cache", "gc", "--cache", "missing/"], "no cache at"),
        (["cache", "rm", "../../etc/passwd", "--cache", "cache"], "invalid cache key"),
        (["cache", "rm", KEY.upper(), "--cache", "cache"], "invalid cache key"),
        (["cache", "rm", "--study", "-1", "--cache", "cache"], "--study"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], needle: str, work: Path) -> None:
    before = sorted(p.name for p in work.iterdir())
    _assert_one_line_error(_eeipu(*argv, cwd=work), needle)
    assert not (work / "missing").exists()  # nothing created for a cache that is not there
    assert not (work / "home").exists() or argv[0] == "tune"
    assert (work / "a-file").read_text() == "not a cache"
    assert sorted(p.name for p in work.iterdir() if p.name != "home") == before


def test_studies_from_an_unreachable_server(work: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    _assert_one_line_error(_eeipu("studies", "list", "--server", url, cwd=work), "cannot reach")


def test_serve_checks_its_port(work: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        db = f"sqlite:///{work / 's.db'}"
        proc = _eeipu("serve", "--db", db, "--port", str(port), "--workers", "0", cwd=work)
    _assert_one_line_error(proc, f"127.0.0.1:{port}")


def test_a_closed_pipe_ends_quietly(work: Path) -> None:
    """``eeipu pipelines ... | head`` where the reader is gone before the output is written."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for argv in (["pipelines"], ["pipelines", "forget-mi"]):
        proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=work,
            env=env,
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # the reader closes the pipe before the interpreter has started
        err = proc.stderr.read().decode()
        assert proc.wait(120) == 141, err
        assert err == "", err


class _Store:
    """A trial store whose study lists a key that is not a cache key (an older version's)."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys

    def get_study(self, sid: int) -> object:
        return object()

    def stage_keys(self, sid: int) -> list[str]:
        return self.keys

    def close(self) -> None:
        pass


def test_cache_rm_by_study_never_deletes_outside_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    assert main(["run", "synthetic-3stage", "--random", "--cache", str(cache), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    keys = [s["key"] for s in rec["stages"]]
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    bad = os.path.relpath(victim, cache)
    import api.store

    monkeypatch.setattr(api.store, "open_store", lambda *a, **k: _Store([bad, *keys]))
    assert main(["cache", "rm", "--study", "1", "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    assert f"evicted {len(keys)} entries" in out and "skipped 1 invalid" in out
    assert victim.read_text() == "keep me"
    assert main(["cache", "ls", "--cache", str(cache), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["entries"] == []


def _parsers(
    p: argparse.ArgumentParser, path: str
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                yield from _parsers(sp, f"{path} {name}")


def test_every_help_names_each_default() -> None:
    seen = 0
    for path, p in _parsers(build_parser(), "eeipu"):
        text = " ".join(p.format_help().split())
        fmt = p._get_formatter()
        for a in p._actions:
            if not shows_default(a):
                continue
            seen += 1
            shown = " ".join(fmt._format_action(a).split())
            assert "default" in shown.lower(), (path, a.option_strings, shown)
            assert shown in text
    assert seen >= 20
    serve = dict(_parsers(build_parser(), "eeipu"))["eeipu serve"].format_help()
    assert "(default: 8765)" in " ".join(serve.split())


def test_serve_defaults_agree_with_the_service() -> None:
    from api.config import Settings

    serve = dict(_parsers(build_parser(), "eeipu"))["eeipu serve"]
    help_ = {a.dest: " ".join((a.help or "").split()) for a in serve._actions}
    assert f"or {Settings().workers})" in help_["workers"]
    assert "$EEIPU_DB" in help_["db"] and "$EEIPU_CACHE" in help_["cache"]
