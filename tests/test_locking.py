"""The lock protocol (index.store.connection): readers wait for writers, boundedly;
writers refuse read-only databases and folders before touching anything."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from index.store import connection
from index.store.connection import open_read, wait_for_writers, write_lock
from index.store.labels import append_label
from index.store.readonly_sql import run_query
from solu.cli import main
from solu.errors import UserError
from helpers.synthetic_index import build_synthetic_index

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def db(tmp_path) -> Path:
    return build_synthetic_index(tmp_path / "index.duckdb")


def hold_lock(db: Path, seconds: float) -> threading.Thread:
    held = threading.Event()

    def run():
        with write_lock(db):
            held.set()
            time.sleep(seconds)

    t = threading.Thread(target=run)
    t.start()
    held.wait()
    return t


def test_readers_wait_for_a_writer_instead_of_failing(db):
    t = hold_lock(db, 1.0)
    start = time.monotonic()
    con = open_read(db)
    waited = time.monotonic() - start
    con.close()
    t.join()
    assert waited >= 0.5


def test_sql_waits_for_a_writer_too(db):
    t = hold_lock(db, 1.0)
    df, _ = run_query(db, "SELECT count(*) AS n FROM models")
    t.join()
    assert df.n[0] == 2


def test_a_reader_gives_up_after_a_bounded_wait_with_one_line(db):
    t = hold_lock(db, 1.5)
    start = time.monotonic()
    with pytest.raises(UserError, match="busy") as e:
        wait_for_writers(db, wait_s=0.3)
    assert time.monotonic() - start < 1.2 and "\n" not in str(e.value)
    t.join()


def test_readers_wait_out_a_duckdb_write_connection_of_another_process(db):
    """Below the lock file: a process that holds DuckDB's own write lock for a second."""
    script = ("import duckdb, sys, time\ncon = duckdb.connect(sys.argv[1])\nprint('open', flush=True)\n"
              "time.sleep(1.0)\ncon.close()\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(db)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "open"
    con = open_read(db)
    assert con.execute("SELECT count(*) FROM models").fetchone()[0] == 2
    con.close()
    proc.wait()


def test_reads_and_sql_succeed_while_label_writers_run(db):
    """The issue's 'busy' failures: a writer process appends labels back to back while
    this process reads and runs SQL; every read and every query succeeds."""
    script = ("import sys\nfrom index.store.labels import append_label\n"
              "for i in range(20):\n    append_label(sys.argv[1], 'gelu-synth', 0, i % 64, f'w{i}', author='w')\n")
    writer = subprocess.Popen([sys.executable, "-c", script, str(db)], cwd=ROOT)
    reads = queries = 0
    while writer.poll() is None or reads < 10:
        con = open_read(db)
        con.execute("SELECT count(*) FROM labels").fetchone()
        con.close()
        reads += 1
        if queries < 4:
            run_query(db, "SELECT count(*) FROM current_labels")
            queries += 1
    assert writer.wait() == 0
    con = open_read(db)
    assert con.execute("SELECT count(*) FROM labels WHERE author = 'w'").fetchone()[0] == 20
    con.close()


def test_writes_refuse_read_only_databases_and_folders_and_leave_no_lock(db):
    before = db.read_bytes()
    db.chmod(0o444)
    with pytest.raises(UserError, match="read-only"):
        append_label(db, "gelu-synth", 0, 0, "x")
    db.chmod(0o644)
    db.parent.chmod(0o555)
    try:
        with pytest.raises(UserError, match="read-only folder"):
            append_label(db, "gelu-synth", 0, 0, "x")
        con = open_read(db)  # reading a database in a read-only folder still works
        con.close()
        run_query(db, "SELECT 1")
    finally:
        db.parent.chmod(0o755)
    assert db.read_bytes() == before and not connection.lock_path(db).exists()


def test_a_missing_database_is_not_created_by_a_write(tmp_path):
    missing = tmp_path / "nope.duckdb"
    with pytest.raises(UserError, match="not found"):
        append_label(missing, "m", 0, 0, "x")
    assert list(tmp_path.iterdir()) == []


HOLD_LABEL = """import sys, time
from index.store.connection import open_write
with open_write(sys.argv[1]) as con:
    con.execute("INSERT INTO labels (label_id, model_id, layer, neuron, label, source) "
                "VALUES (99, 'gelu-synth', 0, 3, 'kept', 'human')")
    con.execute("INSERT INTO concepts (name, description, pattern) VALUES ('logged', 'only in the log', 'x')")
    print("written", flush=True)
    time.sleep(120)
"""


def test_a_killed_label_writer_never_locks_labels_out(db, tiny_checkpoints, tiny_corpus, capsys):
    """SIGKILL a label writer while it holds the lock and its write-ahead log is not yet
    folded into the file; then re-index: the label is kept, no log is left beside the new
    file (DuckDB would replay it there and refuse the file), and every command reads it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LABEL, str(db)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
        wal = Path(str(db) + ".wal")
        assert wal.stat().st_size > 0
    finally:
        proc.kill()
        proc.wait()
    assert main(["index", str(tiny_checkpoints["gelu"]), "--db", str(db), "--dataset", str(tiny_corpus),
                 "--tokens", "300", "--no-progress"]) == 0
    assert not wal.exists()
    capsys.readouterr()
    assert main(["sql", "--db", str(db), "SELECT label FROM labels WHERE label_id = 99"]) == 0
    assert "kept" in capsys.readouterr().out
    append_label(db, "gelu-synth", 0, 4, "after")
    con = open_read(db)
    labels = con.execute("SELECT label FROM labels WHERE label IN ('kept', 'after') ORDER BY 1").fetchall()
    assert labels == [("after",), ("kept",)]
    # not human data, so not carried over at the swap: it survives because the build's copy took the log along
    assert con.execute("SELECT name FROM concepts WHERE name = 'logged'").fetchall() == [("logged",)]
    con.close()


def test_a_log_beside_no_database_is_refused(tmp_path, tiny_checkpoints, tiny_corpus, capsys):
    db = tmp_path / "gone.duckdb"
    Path(str(db) + ".wal").write_bytes(b"left over")
    code = main(["index", str(tiny_checkpoints["gelu"]), "--db", str(db), "--dataset", str(tiny_corpus),
                 "--tokens", "300", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "stands beside no database" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gone.duckdb.wal"]


@pytest.mark.parametrize("kind", ["to-the-index", "dangling", "looping"])
def test_writers_refuse_a_database_reached_through_a_link(db, tmp_path, tiny_checkpoints, tiny_corpus, capsys, kind):
    """Through a link a writer's lock and log would miss the database's own, and a rebuilt
    index would replace the link: `index` and `label` refuse, the link and the database
    stay as they were, and nothing is created beside either."""
    from helpers.db_files import digest

    folder = tmp_path / "links"
    folder.mkdir()
    link = folder / "link.duckdb"
    link.symlink_to({"to-the-index": db, "dangling": folder / "nowhere.duckdb", "looping": link}[kind])
    before, beside = digest(db), sorted(p.name for p in db.parent.iterdir())
    for args in (["index", str(tiny_checkpoints["gelu"]), "--db", str(link), "--dataset", str(tiny_corpus),
                  "--tokens", "300", "--no-progress"],
                 ["label", "--db", str(link), "gelu-synth", "0", "1", "through a link"]):
        code = main(args)
        err = capsys.readouterr().err.strip().splitlines()
        said = "symbolic link" in err[0] or (kind != "to-the-index" and "not found" in err[0])
        assert code == 2 and len(err) == 1 and said, (args[0], err)
    assert link.is_symlink() and [p.name for p in folder.iterdir()] == ["link.duckdb"]
    assert digest(db) == before and sorted(p.name for p in db.parent.iterdir()) == beside


def test_a_damaged_database_is_refused_at_once(db, capsys):
    """A damaged header block: `sql` and `label` say it is not a database, without first
    waiting LOCK_WAIT_S as if a writer held it."""
    with open(db, "r+b") as f:
        f.seek(4096)
        f.write(b"\xff" * 4096)
    for args in (["sql", "--db", str(db), "SELECT 1"], ["label", "--db", str(db), "gelu-synth", "0", "1", "x"]):
        start = time.monotonic()
        code = main(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and ("not a DuckDB database" in err[0] or "Corrupt" in err[0]), err
        assert time.monotonic() - start < connection.LOCK_WAIT_S / 2


def test_a_lock_conflict_is_the_word_not_the_letters():
    """A damaged file's checksum error mentions a "block": it is refused at once as not a
    database, not waited on for LOCK_WAIT_S as if a writer held the file."""
    lock = 'IO Error: Could not set lock on file "x.duckdb": Conflicting lock is held in /usr/bin/python (PID 7)'
    damaged = "Corrupt database file: computed checksum 1 does not match stored checksum 2 in block at location 4096"
    in_a_lock_folder = 'IO Error: Could not read from file "/data/lock/index.duckdb": not a database'
    assert connection.is_lock_conflict(Exception(lock)) and not connection.is_lock_conflict(Exception(damaged))
    assert not connection.is_lock_conflict(Exception(in_a_lock_folder))
