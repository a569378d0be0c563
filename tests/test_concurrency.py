"""Several Optuna workers on one study end with exactly the trial budget and every record once.

* journal storage: ``search.concurrency: 3`` in one search, and three
  ``shufflenas search EXP --resume`` processes started at once on one run directory;
* PostgreSQL: three processes, each with its own run directory (as on three
  machines), on a server this module starts from the system's binaries
  (skipped, with the reason, where they or the Python driver are missing).
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from nas.run_folder import RunFolder
from test_search_common import records, start_cli, tiny_experiment

TRIALS = 6
WORKERS = 3


def study_trials(name: str, storage):
    import optuna

    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def journal(run_dir: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(RunFolder(run_dir).optuna_journal)))


def assert_exact(trials, recs: list[dict], n: int) -> None:
    """``n`` trials in the study, all finished, numbered uniquely, none recovered from a live worker,
    and ``recs`` (a trials.jsonl) holds each one's record exactly once."""
    from optuna.trial import TrialState

    assert len(trials) == n, [(t.number, t.state.name, t.user_attrs.get("owner")) for t in trials]
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED) for t in trials)
    assert not any(t.user_attrs.get("interrupted") for t in trials)
    numbers = sorted(t.number for t in trials)
    assert numbers == list(range(n))
    assert all("record" in t.user_attrs for t in trials)
    got = sorted(r["number"] for r in recs if r["number"] >= 0)
    assert got == numbers  # each finished trial once: nothing lost, nothing written twice
    ids = [r["trial_id"] for r in recs]
    assert len(ids) == len(set(ids))


def start_workers(exps: list[Path], tmp: Path) -> list[subprocess.Popen]:
    return [start_cli("search", e, "--resume", "--json", "--no-onnx", cwd=e.parent, log=tmp / f"w{i}.log")
            for i, e in enumerate(exps)]


def wait_all(procs: list[subprocess.Popen], tmp: Path, timeout: float = 240) -> None:
    codes = [p.wait(timeout=timeout) for p in procs]
    logs = "\n".join((tmp / f"w{i}.log").read_text()[-2000:] for i in range(len(procs)))
    assert codes == [0] * len(procs), logs


@pytest.mark.slow
def test_concurrency_setting_runs_exactly_the_budget(tmp_path):
    from conftest import run_cli

    exp = tiny_experiment(tmp_path, name="conc", trials=TRIALS, concurrency=WORKERS)
    r = run_cli("search", exp, "--json", "--no-onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["trials"] == TRIALS
    run_dir = tmp_path / "run"
    assert_exact(study_trials("conc", journal(run_dir)), records(run_dir), TRIALS)


@pytest.mark.slow
def test_workers_end_with_a_driver_stopped_by_kill_pid(tmp_path):
    """`kill PID` reaches only the driver: its worker processes must not go on claiming trials."""
    import signal
    import time

    from test_search_common import wait_for_records

    exp = tiny_experiment(tmp_path, name="orphan", trials=200, concurrency=2)
    proc = start_cli("search", exp, "--json", "--no-onnx", cwd=tmp_path, log=tmp_path / "orphan.log")
    wait_for_records(tmp_path / "run", 1, proc)
    workers = [int(x) for x in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert workers, "no worker processes found"
    os.kill(proc.pid, signal.SIGKILL)  # the driver alone, not its process group
    proc.wait()
    t0 = time.time()
    while time.time() - t0 < 30 and any(Path(f"/proc/{w}").exists() and
                                         Path(f"/proc/{w}/stat").read_text().split()[2] != "Z" for w in workers):
        time.sleep(0.2)
    alive = [w for w in workers if Path(f"/proc/{w}").exists() and Path(f"/proc/{w}/stat").read_text().split()[2] != "Z"]
    assert not alive, f"worker processes {alive} outlived the driver"


@pytest.mark.slow
def test_separate_processes_on_one_run_dir_run_exactly_the_budget(tmp_path):
    exp = tiny_experiment(tmp_path, name="sep", trials=TRIALS)
    wait_all(start_workers([exp] * WORKERS, tmp_path), tmp_path)
    run_dir = tmp_path / "run"
    trials = study_trials("sep", journal(run_dir))
    recs = records(run_dir)
    assert_exact(trials, recs, TRIALS)
    assert all(t.user_attrs.get("owner") for t in trials)
    # the three re-measured and exported in turn: the front in pareto/ is this run's, re-measured
    front = json.loads(RunFolder(run_dir).front_json.read_text())["members"]
    assert front and all(m["latency_measured_ms"] for m in front)
    measured = {r["arch_key"] for r in recs if r["latency_measured_ms"]}
    assert {m["arch_key"] for m in front} <= measured


# --- PostgreSQL -------------------------------------------------------------------------------

def _pg_bin() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH, else Debian's newest /usr/lib/postgresql/N/bin."""
    for found in [shutil.which("pg_ctl"), *sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)]:
        if found and (Path(os.path.realpath(found)).parent / "initdb").exists():
            return Path(os.path.realpath(found)).parent
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1 (socket directory in /tmp), stopped afterwards."""
    pytest.importorskip("psycopg2", reason="psycopg2 (the test extra's PostgreSQL driver) is not installed")
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; apt-get install postgresql")
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        as_user = [shutil.which("runuser") or "runuser", "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="shufflenas-pg-"))  # not under pytest's root-only tmp
    if as_user:
        shutil.chown(base, "postgres", "postgres")
    data, port = base / "data", _free_port()

    def pg(*args, check=True):
        return subprocess.run([*as_user, *map(str, args)], capture_output=True, text=True, timeout=120,
                              check=check)

    try:
        pg(bin_dir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
        pg(bin_dir / "pg_ctl", "-D", data, "-l", base / "server.log", "-w", "start",
           "-o", f"-h 127.0.0.1 -p {port} -k {base} -F")
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"could not start a PostgreSQL server: {(exc.stderr or exc.stdout).strip()[-300:]}")
    try:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE nas")
        conn.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/nas"
    finally:
        pg(bin_dir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_storage_url_errors_are_one_line(tmp_path, cli):
    pytest.importorskip("psycopg2", reason="psycopg2 (the test extra's PostgreSQL driver) is not installed")
    for i, (url, says) in enumerate([("mysql://u@127.0.0.1/db", "is not a postgresql:// or sqlite:/// URL"),
                                     (f"postgresql+psycopg2://u@127.0.0.1:{_free_port()}/db", "cannot connect to")]):
        r = cli("search", tiny_experiment(tmp_path, name="bad", optuna={"storage": url}, output=f"run{i}"), "--json",
                cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr[-2000:]


@pytest.mark.slow
def test_workers_with_own_run_dirs_on_postgresql_run_exactly_the_budget(tmp_path, postgres_url):
    from conftest import run_cli

    exps = []
    for i in range(WORKERS):
        d = tmp_path / f"machine{i}"
        d.mkdir()
        exps.append(tiny_experiment(d, name="pg", trials=TRIALS, optuna={"storage": postgres_url}))
    wait_all(start_workers(exps, tmp_path), tmp_path)
    trials = study_trials("pg", postgres_url)
    for e in exps:  # each wrote what had finished when it stopped: a subset, each record once
        recs = records(e.parent / "run")
        ids = [r["trial_id"] for r in recs]
        assert len(ids) == len(set(ids)) and {r["number"] for r in recs} <= {t.number for t in trials}
    # One more --resume finds nothing left to claim and renders the whole study.
    r = run_cli("search", exps[0], "--resume", "--json", "--no-onnx", cwd=exps[0].parent)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_exact(study_trials("pg", postgres_url), records(exps[0].parent / "run"), TRIALS)
    assert json.loads(r.stdout)["trials"] == TRIALS
