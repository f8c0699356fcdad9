"""``eeipu report``: four PNG plots and a markdown summary, of one study or a comparison."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.cli import main
from api.store import NewTrial, StudySpec, TrialResult, TrialState, TrialStore, open_store
from bench.dashboard import fill_study
from tests.api._server import start_server

PNGS = ("best_so_far.png", "stage_costs.png", "reuse.png", "importance.png")


def _unlearning_study(store: TrialStore) -> int:
    """A study whose one trial reports an unlearning metric with its references."""
    spec = StudySpec("forget-mi", "random", 100.0, "forget_auc", "minimize", mode="external")
    st = store.create_study(spec, None)
    added = store.add_trials(st.id, [NewTrial({"unlearn": {"lr": 0.01}})], None, st.ask_version)
    assert added is not None
    (t,) = added
    store.claim_trial("w", study_id=st.id)
    metrics = {"forget_auc": 0.52, "retrained_forget_auc": 0.5, "original_forget_auc": 0.9}
    metrics |= {"forget_auc_band_low": 0.45, "forget_auc_band_high": 0.55}
    store.finish_trial(t.id, "w", TrialResult(TrialState.COMPLETE, metrics, 0.52, 3.0))
    return int(st.id)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[int]]:
    tmp = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{tmp / 'db.sqlite'}"
    store = open_store(url)
    try:
        ids = [fill_study(store, 80, seed=1), fill_study(store, 40, seed=2)]
        ids.append(_unlearning_study(store))
    finally:
        store.close()
    return url, ids


def _check_pngs(out: Path) -> None:
    for name in PNGS:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name


def test_report_of_one_study(
    db: tuple[str, list[int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, (sid, _, _) = db
    assert main(["report", str(sid), "--db", url, "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 5 and printed[-1].endswith("summary.md")
    _check_pngs(tmp_path / "r")
    md = (tmp_path / "r" / "summary.md").read_text()
    store = open_store(url)
    try:
        st = store.get_study(sid)
    finally:
        store.close()
    assert st is not None and st.best_value is not None
    assert md.startswith(f"# Study {sid}")
    assert f"| {st.best_value:.6g} |" in md and f"{st.trials_done} (" in md
    for name in PNGS:
        assert f"]({name})" in md
    assert "| s2_hartmann3 |" in md and "Most important parameters" in md


def test_report_compares_studies(
    db: tuple[str, list[int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, (a, b, _) = db
    assert main(["report", str(a), str(b), "--db", url, "--out", str(tmp_path / "c")]) == 0
    _check_pngs(tmp_path / "c")
    md = (tmp_path / "c" / "summary.md").read_text()
    assert md.startswith(f"# Comparison of studies {a}, {b}")
    assert md.count("| synthetic-3stage-flat |") == 2
    assert f"## #{a} random" in md and f"## #{b} random" in md


def test_report_puts_unlearning_metrics_next_to_the_retrained_model(
    db: tuple[str, list[int]], tmp_path: Path
) -> None:
    url, (_, _, u) = db
    assert main(["report", str(u), "--db", url, "--out", str(tmp_path / "u")]) == 0
    md = (tmp_path / "u" / "summary.md").read_text()
    assert "| forget_auc | 0.52 | 0.5 | 0.9 | 0.45–0.55 | yes |" in md


def test_report_bad_input_is_one_line(
    db: tuple[str, list[int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, (sid, _, _) = db
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    for argv in (
        ["report", "999", "--db", url, "--out", str(tmp_path / "x")],
        ["report", str(sid), "--db", url, "--out", str(afile)],
        ["report", str(sid), str(sid), "--db", url, "--out", str(tmp_path / "y")],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        main(["report", str(sid), "--db", url])  # no --out
    assert e.value.code == 2


def test_report_through_a_server(db: tuple[str, list[int]], tmp_path: Path) -> None:
    url, (sid, _, _) = db
    srv = start_server(tmp_path, db_url=url, workers=0, token="rep-token")
    try:
        argv = ["report", str(sid), "--server", srv.url, "--token", "rep-token"]
        assert main([*argv, "--out", str(tmp_path / "s")]) == 0
    finally:
        srv.stop()
    _check_pngs(tmp_path / "s")
    assert (tmp_path / "s" / "summary.md").read_text().startswith(f"# Study {sid}")


def test_report_bad_input_writes_nothing(
    db: tuple[str, list[int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad or huge id, an unreachable server, an --out that cannot be made: exit 2, one
    line, and no directory left behind."""
    url, (sid, _, _) = db
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    cases = [
        (["report", "999", "--db", url, "--out", str(tmp_path / "a")], "999"),
        (["report", "99999999999999999999", "--db", url, "--out", str(tmp_path / "b")], "id"),
        (["report", "0", "--db", url, "--out", str(tmp_path / "b")], "id"),
        (
            ["report", str(sid), "--server", "http://127.0.0.1:1", "--out", str(tmp_path / "c")],
            "reach",
        ),
        (["report", str(sid), "--server", "localhost:1", "--out", str(tmp_path / "c")], "http://"),
        (["report", str(sid), "--db", url, "--out", str(afile / "d")], "file.txt"),
        (["report", str(sid), "--db", url, "--out", ""], "--out"),
    ]
    for argv, needle in cases:
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse refuses the usage itself
            rc = int(e.code or 0)
        assert rc == 2, argv
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err and needle in lines[0], (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_report_never_writes_through_a_link(db: tuple[str, list[int]], tmp_path: Path) -> None:
    url, (sid, _, _) = db
    out = tmp_path / "r"
    out.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    for name in ("summary.md", PNGS[0]):
        (out / name).symlink_to(outside)
    assert main(["report", str(sid), "--db", url, "--out", str(out)]) == 0
    assert outside.read_text() == "keep me"
    assert not (out / "summary.md").is_symlink() and not (out / PNGS[0]).is_symlink()
    _check_pngs(out)
    assert sorted(p.name for p in out.iterdir()) == sorted([*PNGS, "summary.md"])  # no leftovers


def test_report_shows_names_literally(tmp_path: Path) -> None:
    """A name with matplotlib's math signs or with HTML and markdown: the plots are drawn and
    the summary shows the text, with no HTML or table cell of its own."""
    import sqlite3

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    store = open_store(url)
    try:
        sid = fill_study(store, 30, seed=5)
    finally:
        store.close()
    name = "$x^$ <img src=x onerror=alert(1)> | **b** [l](http://e)\nnext"
    with sqlite3.connect(tmp_path / "db.sqlite") as con:
        con.execute("UPDATE studies SET name = ? WHERE id = ?", (name, sid))
    assert main(["report", str(sid), "--db", url, "--out", str(tmp_path / "r")]) == 0
    _check_pngs(tmp_path / "r")
    md = (tmp_path / "r" / "summary.md").read_text()
    assert "<img" not in md and "&lt;img src=x onerror=alert(1)&gt;" in md
    assert r"\| \*\*b\*\* \[l\](http://e) next" in md
    row = next(line for line in md.splitlines() if line.startswith(f"| #{sid} "))
    assert row.count(" | ") == 8  # nine cells: the name's "|" did not add one
