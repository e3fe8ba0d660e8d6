"""Sweeps on a real PostgreSQL server: the README's multi-machine commands, as written there, with
one worker killed (SIGKILL) in the middle of a real point.

The test starts a throwaway server of its own (``initdb`` in a temporary directory owned by the
``postgres`` user when run as root, a Unix socket only, no TCP port) and stops it at the end; it is
skipped only when PostgreSQL's ``initdb`` is not on PATH. The driver comes from fitc's ``postgres``
extra (part of the ``test`` extra): a missing driver fails the test rather than skipping it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
STUDY = "digits-grid"
README_OUT = "/shared/sweeps/digits"
# Tiny real points (the README's grid, 6 points) and a short grace period for the killed point.
TINY = ["--set", "train_epochs=3", "--set", "finetune_epochs=1", "--set", "until=export"]
HEARTBEAT = ["--heartbeat-interval", "1", "--grace-period", "6"]
PAUSE_S, STALE_S = 3.0, 2.5  # a stopped worker's heartbeat is older than STALE_S after PAUSE_S


def _as_postgres() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server on a Unix socket, with an empty database ``sweeps``."""
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        pytest.skip("PostgreSQL's initdb / pg_ctl are not on PATH: no server to test sweeps on")
    import psycopg2  # fitc's `postgres` extra (in `test`): missing is a broken install, not a skip

    # Short path: a Unix socket path must stay under 108 bytes.
    d = Path(tempfile.mkdtemp(prefix="fitc-pg-", dir="/tmp" if Path("/tmp").is_dir() else None))
    if os.geteuid() == 0:  # initdb refuses root: the server runs as the postgres user
        shutil.chown(d, "postgres", "postgres")
    data = d / "data"
    pg = [*_as_postgres(), "pg_ctl", "-D", str(data)]
    subprocess.run(
        [*_as_postgres(), "initdb", "-D", str(data), "-A", "trust", "-U", "fitc"],
        check=True,
        capture_output=True,
    )
    started = False
    try:
        subprocess.run(
            [*pg, "-o", f"-k {d} -c listen_addresses=''", "-l", str(d / "log"), "-w", "start"],
            check=True,
            capture_output=True,
        )
        started = True
        conn = psycopg2.connect(host=str(d), user="fitc", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE sweeps")
        conn.close()
        yield SimpleNamespace(socket_dir=d, url=f"postgresql+psycopg2://fitc@/sweeps?host={d}")
    finally:
        if started:
            subprocess.run([*pg, "-m", "fast", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(d, ignore_errors=True)


def readme_commands() -> list[list[str]]:
    """The ``fitc …`` commands of the README's multi-machine block, split as a shell would."""
    text = README.read_text()
    block = re.search(r"\*\*Several machines\.\*\*.*?```bash\n(.*?)```", text, re.S)
    assert block, "README: the 'Several machines' bash block is missing"
    lines = block.group(1).replace("\\\n", " ").splitlines()
    cmds = [shlex.split(line) for line in lines if line.startswith("fitc ")]
    assert [c[:3] for c in cmds] == [
        ["fitc", "sweep", "--model"],
        ["fitc", "sweep", "worker"],
        ["fitc", "sweep", "collect"],
        ["fitc", "report", README_OUT],
    ], cmds
    urls = [ln.split("=", 1)[1] for ln in lines if ln.startswith("URL=postgresql")]
    assert urls and all(u.startswith("postgresql+psycopg2://") for u in urls), urls
    return cmds


def argv(cmd: list[str], url: str, out: Path, *extra: str) -> list[str]:
    """A README command with the tested URL and sweep directory, run by this interpreter."""
    subst = {"$URL": url, README_OUT: str(out)}
    return [sys.executable, "-m", "fitc.cli", *(subst.get(a, a) for a in cmd[1:]), *extra]


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # fields after "(comm)": state, ppid, …
            out.append(int(stat.parent.name))
    return sorted(out)


def running_heartbeats(conn) -> dict[str, float | None]:
    """Point key → seconds since the last heartbeat of its RUNNING trial (None: no beat yet)."""
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT a.value_json, EXTRACT(EPOCH FROM (LOCALTIMESTAMP - h.heartbeat))
            FROM trials t
            JOIN studies s ON s.study_id = t.study_id
            JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = 'fitc_key'
            LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id
            WHERE s.study_name = %s AND t.state = 'RUNNING'
            """,
            (STUDY,),
        )
        return {k.strip('"'): (None if age is None else float(age)) for k, age in cur.fetchall()}


def trials_by_key(url: str) -> dict[str, list]:
    import optuna

    study = optuna.load_study(study_name=STUDY, storage=url)
    out: dict[str, list] = {}
    for t in study.get_trials(deepcopy=False):
        out.setdefault(t.user_attrs["fitc_key"], []).append(t)
    return out


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def kill_one_worker_mid_point(machine1: subprocess.Popen, conn, deadline: float) -> str:
    """SIGKILL one of machine 1's two worker processes while it runs a point; return the point.

    The victim is stopped first (SIGSTOP) so the ledger holds still: its RUNNING trial is the one
    whose heartbeat goes stale while the other worker keeps beating. Between two points (no such
    trial) it is resumed and tried again later."""
    while True:
        assert machine1.poll() is None, "the sweep ended before a worker could be killed"
        assert time.time() < deadline, "no worker was ever seen in the middle of a point"
        kids = children(machine1.pid)
        if len(kids) == 2 and len(running_heartbeats(conn)) == 2:
            victim = kids[0]
            os.kill(victim, signal.SIGSTOP)
            time.sleep(PAUSE_S)
            stale = [k for k, age in running_heartbeats(conn).items() if age and age > STALE_S]
            if len(stale) == 1:
                os.kill(victim, signal.SIGKILL)
                return stale[0]
            os.kill(victim, signal.SIGCONT)
        time.sleep(0.3)


@pytest.mark.slow
def test_readme_multi_machine_commands_on_postgresql_with_a_worker_killed(postgres, tmp_path):
    import psycopg2

    create, join, collect, report = readme_commands()
    url, out = postgres.url, tmp_path / "digits"
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.time()

    started: list[subprocess.Popen] = []

    def start(cmd: list[str], log: Path) -> subprocess.Popen:
        with open(log, "w") as f:  # a session of its own: its workers can be ended with it
            p = subprocess.Popen(
                cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        started.append(p)
        return p

    try:
        # machine 1: create the sweep and run two local workers; one is killed mid-point
        machine1 = start(argv(create, url, out, *TINY, *HEARTBEAT, "--no-progress"), logs / "m1")
        conn = psycopg2.connect(host=str(postgres.socket_dir), user="fitc", dbname="sweeps")
        conn.autocommit = True
        try:
            killed = kill_one_worker_mid_point(machine1, conn, deadline=t0 + 120)
        finally:
            conn.close()
        # machine 2: join while machine 1's other worker goes on
        machine2 = start(argv(join, url, out, "--no-progress"), logs / "m2")
        rc1, rc2 = machine1.wait(timeout=180), machine2.wait(timeout=180)
    except BaseException:
        for p in started:  # end what this test started, with the workers in its session
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        raise
    tails = [(logs / m).read_text()[-3000:] for m in ("m1", "m2")]
    assert (rc1, rc2) == (0, 0), "\n".join(tails)

    # nothing lost, nothing duplicated: one COMPLETE trial per point; the killed point failed
    # once (worker lost: no error of its own) and was computed again to completion
    by_key = trials_by_key(url)
    assert len(by_key) == 6 and killed in by_key
    for key, trials in by_key.items():
        states = sorted(t.state.name for t in trials)
        assert states == (["COMPLETE", "FAIL"] if key == killed else ["COMPLETE"]), (key, states)
    lost = next(t for t in by_key[killed] if t.state.name == "FAIL")
    assert "error" not in lost.user_attrs
    retry = next(t for t in by_key[killed] if t.state.name == "COMPLETE")
    assert retry.system_attrs.get("fitc_retry_of") == [lost.number]
    for key in by_key:
        run_dir = out / "points" / key
        assert (run_dir / "equivalence.json").is_file(), key
        assert "verify" in (run_dir / "run.json").read_text(), key

    # any machine: collect, then the report
    done = subprocess.run(argv(collect, url, out), capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 7 and sum(",COMPLETE," in r for r in rows) == 6
    done = subprocess.run(argv(report, url, out), capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "6 complete" in (out / "report.md").read_text()

    # machine 1's command again resumes: nothing to enqueue, nothing recomputed
    points = tree_hash(out / "points")
    again = subprocess.run(
        argv(create, url, out, *TINY, *HEARTBEAT, "--no-progress"),
        capture_output=True,
        text=True,
        env=env,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert sum(len(ts) for ts in trials_by_key(url).values()) == 7
    assert tree_hash(out / "points") == points
    assert time.time() - t0 < 240
