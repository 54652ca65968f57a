"""The SQL engine's limits hold for any query: no path outside the database is readable,
and memory- and time-hungry queries stop within the time limit plus 2 s with resident
memory under the memory limit plus 300 MB, measured here on the query process."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from index.store.readonly_sql import GB, QueryStopped, SqlLimits, open_query, run_query
from solu.errors import UserError
from helpers.processes import descendants, gone_within
from helpers.synthetic_index import build_synthetic_index

TIME_LIMIT_S = 3.0


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sqllimits") / "s.duckdb"
    build_synthetic_index(path)
    return path


def _refused(db: Path, path: Path):
    with pytest.raises(UserError, match="(?i)permission|disabled|access") as e:
        run_query(db, f"SELECT * FROM read_csv('{path}')")
    return e


def test_the_working_directorys_dot_tmp_is_not_readable(db, tmp_path, monkeypatch):
    """DuckDB's default temp directory is ./.tmp, which external-access-off still allows."""
    (tmp_path / ".tmp").mkdir()
    secret = tmp_path / ".tmp" / "c.csv"
    secret.write_text("a,b\n1,2\n")
    monkeypatch.chdir(tmp_path)
    _refused(db, secret)
    with pytest.raises(UserError):
        run_query(db, "SELECT * FROM read_csv('.tmp/c.csv')")


def test_the_system_temp_directory_is_not_readable(db):
    with tempfile.NamedTemporaryFile("w", suffix=".csv", dir=tempfile.gettempdir()) as f:
        f.write("a,b\n1,2\n")
        f.flush()
        _refused(db, Path(f.name))
        with pytest.raises(UserError):
            run_query(db, f"SELECT * FROM glob('{Path(f.name).parent}/*')")


def test_a_file_beside_the_database_is_not_readable(db):
    secret = db.parent / "beside.csv"
    secret.write_text("a,b\n1,2\n")
    _refused(db, secret)


@pytest.mark.parametrize("sql", [
    "SELECT length(repeat('x', 3000000000))",
    "SELECT count(*) FROM range(1000000) a, range(1000000) b",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
    "WITH RECURSIVE r(n, s) AS (SELECT 1, repeat('x', 4096) UNION ALL SELECT n + 1, s FROM r) "
    "SELECT max(length(s)) FROM r",
    "SELECT string_agg(repeat('x', 1000), ',') FROM range(10000000)",
], ids=["repeat-3e9", "cross-join-1e12", "endless-recursive-cte", "recursive-cte-growing", "string-agg-10GB"])
def test_hungry_queries_stop_within_the_limits(db, sql):
    limits = SqlLimits(timeout_s=TIME_LIMIT_S, memory_bytes=GB)
    start = time.monotonic()
    with pytest.raises(QueryStopped) as e:
        with open_query(db, sql, limits) as q:
            for _ in q.chunks():
                pass
    elapsed = time.monotonic() - start
    stats = e.value.stats
    print(f"{sql[:50]!r}: stopped by {e.value.limit} after {elapsed:.2f}s, peak RSS {stats.peak_rss_bytes / 2**20:.0f} MB")
    assert e.value.limit in ("time", "memory") and stats.stopped_by == e.value.limit
    assert e.value.limit in str(e.value)
    assert elapsed < TIME_LIMIT_S + 2
    assert 0 < stats.peak_rss_bytes < GB + 300 * 2**20


def test_a_query_reports_its_peak_memory(db):
    with open_query(db, "SELECT count(*) FROM neurons") as q:
        rows = [r for chunk in q.chunks() for r in chunk]
    assert rows[0][0] > 0 and not q.truncated
    assert 10 * 2**20 < q.stats.peak_rss_bytes < GB and q.stats.stopped_by is None


def test_csv_streams_with_bounded_memory_whatever_the_row_cap(db, tmp_path):
    """1.5 million rows through `solu sql --format csv` with the largest row cap (1e9): the CLI
    process's own peak memory stays far below what holding the rows would take."""
    out = tmp_path / "rows.csv"
    script = (
        "import sys\nfrom solu.cli import main\n"
        f"sys.stdout = open({str(out)!r}, 'w')\n"
        f"code = main(['sql', '--db', {str(db)!r}, '--format', 'csv', '--max-rows', '1000000000', '--timeout', '120',"
        " \"SELECT i, 'row ' || i AS text, i * 0.5 AS half FROM range(1500000) t(i)\"])\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print(code, hwm, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    code, hwm_kb = done.stderr.split()[-2:]
    lines = sum(1 for _ in open(out))
    print(f"1.5M rows as CSV: CLI peak RSS {int(hwm_kb) / 1024:.0f} MB, {out.stat().st_size / 2**20:.0f} MB written")
    assert code == "0" and lines == 1_500_001
    assert int(hwm_kb) * 1024 < 300 * 2**20


@pytest.mark.parametrize("kwargs", [dict(timeout_s=float("nan")), dict(timeout_s=float("inf")), dict(timeout_s=0),
                                    dict(timeout_s=-1), dict(timeout_s=1e308), dict(max_rows=-1),
                                    dict(max_rows=10**18), dict(memory_bytes=1)])
def test_limits_refuse_nan_inf_negative_and_absurd(kwargs):
    with pytest.raises(ValueError):
        SqlLimits(**kwargs)


def test_blobs_dates_and_nan_come_out_as_json_and_csv(db, capsys):
    import json

    from solu.cli import main

    sql = ("SELECT '\\xAA\\xBB'::BLOB AS b, DATE '2024-01-02' AS d, 'nan'::DOUBLE AS x, [1, 2] AS l, "
           "'é<x>' AS s")
    assert main(["sql", "--db", str(db), "--format", "json", sql]) == 0
    assert json.loads(capsys.readouterr().out) == [{"b": "aabb", "d": "2024-01-02", "x": None, "l": [1, 2],
                                                   "s": "é<x>"}]
    assert main(["sql", "--db", str(db), "--format", "csv", sql]) == 0
    assert capsys.readouterr().out.splitlines() == ["b,d,x,l,s", "aabb,2024-01-02,nan,\"[1, 2]\",é<x>"]


ENDLESS = "SELECT count(*) FROM range(1000000) a, range(1000000) b"  # CPU for hours, little memory


def test_a_query_dies_with_its_parent(db):
    """Kill `solu sql` (in its own session, so no terminal signal reaches the child) while
    its query runs: the query process dies too, long before its 60 s limit."""
    parent = subprocess.Popen([sys.executable, "-m", "solu.cli", "sql", "--db", str(db), "--timeout", "60", ENDLESS],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (children := descendants(parent.pid, b"index.store.sql_sandbox")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert children, "no query process was seen"
        time.sleep(0.5)  # the query is running
        parent.kill()
        parent.wait()
        assert gone_within(children[0], 5.0)
    finally:
        parent.kill()
        parent.wait()


def test_a_query_process_stops_at_its_own_alarm(db):
    """The query process ends itself just after its limit, even when no parent kills it."""
    import json

    request = {"db": str(db), "sql": ENDLESS, "max_rows": 10, "threads": 1, "memory_bytes": GB, "lock_wait_s": 1.0,
               "startup_s": 30.0, "timeout_s": 1.0, "parent_pid": os.getpid()}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "index.store.sql_sandbox"], input=json.dumps(request).encode() + b"\n",
                          capture_output=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == -14  # SIGALRM
    assert time.monotonic() - start < 30  # 1 s, its 5 s margin, and a start-up on a loaded machine


def test_a_slow_reader_is_not_cut_off_by_the_query_process_alarm(db):
    """Rows wait in the pipe while the reader works: the query process's own alarm does
    not count that time (only the parent judges it), so a slow consumer gets every row."""
    limits = SqlLimits(timeout_s=1.0, max_rows=100_000)
    got = 0
    with open_query(db, "SELECT range AS n FROM range(100000)", limits) as q:
        for chunk in q.chunks():
            got += len(chunk)
            time.sleep(0.02)  # about 8 s for the 391 chunks: past the 1 s limit and the alarm's margin
    assert got == 100_000 and not q.truncated
