"""One trial path: ``eeipu tune`` and a study over HTTP (parallelism 1) make the same trials.

For a pipeline with declared costs and a seed, both propose the same configurations in the
same order and end with the same best value: they are the same study service, over an
in-process executor in one case and the server's scheduler and worker processes in the other.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from api.cli import main
from api.store import open_store
from tests.api._server import start_server

PIPELINE, SEED, BUDGET = "synthetic-3stage-flat", 7, 200


@pytest.mark.timeout(1500)  # two full EEIPU runs of ~32 trials (GP fits) on a busy machine
def test_eeipu_tune_and_http_study_make_the_same_trials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    argv = ["tune", PIPELINE, "--optimizer", "eeipu", "--seed", str(SEED)]
    argv += ["--budget", str(BUDGET), "--cache", str(tmp_path / "tune-cache")]
    argv += ["--db", url, "--json", "--no-progress"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    store = open_store(url)
    try:
        local = store.list_trials(out["db"]["study_id"])
    finally:
        store.close()

    (tmp_path / "srv").mkdir()
    srv = start_server(tmp_path / "srv", db_url=f"sqlite:///{tmp_path / 'srv.db'}", workers=1)
    try:
        r = srv.client.post(
            "/v1/studies",
            json={
                "pipeline": PIPELINE,
                "optimizer": "eeipu",
                "budget_seconds": BUDGET,
                "seed": SEED,
                "parallelism": 1,
            },
        )
        assert r.status_code == 201, r.text
        done = srv.wait_study(r.json()["id"], timeout=1200)
        page = srv.client.get(f"/v1/studies/{done['id']}/trials", params={"limit": 1000}).json()
    finally:
        srv.stop()
    remote = page["items"]
    assert done["state"] == "completed", done
    assert len(local) == len(remote) == out["n_trials"] >= 10
    assert [t.params for t in local] == [t["params"] for t in remote]
    assert [t.reuse_depth for t in local] == [t["reuse_depth"] for t in remote]
    assert out["best_value"] == done["best"]["value"]
    assert out["cost_spent"] == pytest.approx(done["cost_spent"])
