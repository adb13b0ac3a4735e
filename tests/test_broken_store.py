"""A store that cannot be used as it is: corrupt, truncated, written by a newer loop (a migration
this loop lacks), or read-only (the file, or its folder). Every command that opens the store says
so in one line (what is wrong, what to do), exits 2 and writes nothing: the file is byte-identical
afterwards. The check is in one place (loop.store.open_db raising StoreUnusable)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loop.store import Store, StoreUnusable, open_db
from tiny_model import scripted_run


@pytest.fixture(scope="module")
def good_store(tmp_path_factory) -> Path:
    """A store with one finished scripted run, checkpointed: its file holds everything (the
    tests copy the file alone)."""
    folder = tmp_path_factory.mktemp("good")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOP_LOAD_PLUGINS", "math")
        result, conn = scripted_run(folder, "--rounds", "1", "--set",
                                    "select.prompts_per_round=6", "--set", "evaluate.problems=6",
                                    name="good")
    assert result.exit_code == 0, result.output
    assert conn.execute("pragma wal_checkpoint(truncate)").fetchone()[0] == 0
    conn.close()
    return folder / "loop.db"


def _copy(good: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "loop.db"
    db.write_bytes(good.read_bytes())
    return db


def corrupt(db: Path) -> str:
    data = bytearray(db.read_bytes())
    data[:16] = b"this is no db!!\x00"
    db.write_bytes(bytes(data))
    return "is not a SQLite database"


def corrupt_page(db: Path) -> str:
    """A valid header, garbage in the schema page: SQLite itself finds it corrupt."""
    data = bytearray(db.read_bytes())
    data[100:4096] = os.urandom(3996)
    db.write_bytes(bytes(data))
    return "is corrupt"


def truncated(db: Path) -> str:
    size = db.stat().st_size
    with open(db, "r+b") as fh:
        fh.truncate(size // 2)
    return "is truncated"


def newer(db: Path) -> str:
    conn = sqlite3.connect(db)
    conn.execute("insert into _sqlite_migrations (migration_set, name, applied_at) "
                 "values ('loop', 'm999_from_the_future', '2099-01-01')")
    conn.commit()
    conn.close()
    return "was written by a newer loop (its migration m999_from_the_future is unknown"


def read_only_file(db: Path) -> str:
    db.chmod(0o444)
    return "is read-only: make it writable (chmod u+w"


def read_only_folder(db: Path) -> str:
    db.parent.chmod(0o555)
    return "folder"


BREAKS = {"corrupt": corrupt, "corrupt-page": corrupt_page, "truncated": truncated,
          "newer": newer, "read-only-file": read_only_file, "read-only-folder": read_only_folder}

COMMANDS = {
    "run": lambda folder, db: ["run", str(folder / "task.yaml"), "--db", str(db), "--model",
                               "scripted-adder", "--set", "backend.name=adder", "--method",
                               "noop", "--plugins-dir", str(folder / "plugins")],
    "resume": lambda folder, db: ["resume", "good", "--db", str(db), "--plugins-dir",
                                  str(folder / "plugins")],
    "runs": lambda folder, db: ["runs", "--db", str(db)],
    "show": lambda folder, db: ["show", "good", "--db", str(db)],
    "logs": lambda folder, db: ["logs", "good", "--db", str(db)],
    "mistakes": lambda folder, db: ["mistakes", "good", "--db", str(db)],
    "export": lambda folder, db: ["export", "good", "--what", "attempts", "--db", str(db),
                                  "--out", str(folder / "out.jsonl")],
    "report": lambda folder, db: ["report", "good", "--db", str(db), "--out",
                                  str(folder / "report")],
    "datasette": lambda folder, db: ["datasette", "--db", str(db)],
}


def _digest(db: Path) -> str:
    return hashlib.sha256(db.read_bytes()).hexdigest()


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("kind", list(BREAKS))
def test_every_command_refuses_a_broken_store_in_one_line(kind, command, good_store, tmp_path,
                                                          monkeypatch):
    from loop.cli import app
    from tiny_model import tiny_task_yaml, write_adder_plugin

    import loop.cli.common

    monkeypatch.setattr(loop.cli.common, "_PM", None)
    monkeypatch.setenv("LOOP_LOAD_PLUGINS", "math")
    (tmp_path / "task.yaml").write_text(tiny_task_yaml())
    write_adder_plugin(tmp_path / "plugins")
    db = _copy(good_store, tmp_path / "store")
    expected = BREAKS[kind](db)
    before = _digest(db)
    try:
        result = CliRunner().invoke(app, COMMANDS[command](tmp_path, db))
        assert result.exit_code == 2, (result.output, result.exception)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
        assert str(db.parent) in lines[0]  # names the store (or its folder)
        assert _digest(db) == before  # nothing written
        if kind.startswith("read-only"):
            assert not Path(f"{db}-wal").exists()
    finally:
        db.parent.chmod(0o755)
        db.chmod(0o644)


def test_the_check_is_in_open_db(good_store, tmp_path):
    """Store.open / open_db raise the StoreUnusable the CLI prints; a healthy copy still opens
    (and a -wal from a checkpoint in progress is not mistaken for truncation)."""
    db = _copy(good_store, tmp_path / "a")
    truncated(db)
    with pytest.raises(StoreUnusable, match="is truncated"):
        Store.open(db)
    db = _copy(good_store, tmp_path / "b")
    newer(db)
    with pytest.raises(StoreUnusable, match="newer loop"):
        open_db(db)
    healthy = _copy(good_store, tmp_path / "c")
    store = Store.open(healthy)
    assert store.get_run("good")["status"] == "finished"
    assert store.path == str(healthy)


def test_a_new_store_in_a_read_only_folder_is_one_line(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(StoreUnusable, match="its folder .* is read-only"):
            open_db(folder / "loop.db")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)



def test_the_header_check_never_reads_a_store_this_process_has_open(tmp_path, monkeypatch):
    """Closing any descriptor of a database file drops the POSIX locks of every SQLite connection
    of the process to it (seen as `disk I/O error` after an in-process `loop resume` in the
    accelerate tests): the header check reads the file only when no connection has it."""
    import sqlite_utils

    from loop import store as store_module

    path = tmp_path / "loop.db"
    Store.open(path).db.conn.close()
    assert not store_module.open_in_this_process(path)
    first = sqlite_utils.Database(path)
    assert first["runs"].count == 0
    assert store_module.open_in_this_process(path)
    reads = []
    real_open = open

    def spy(file, *args, **kwargs):
        if Path(file) == path:
            reads.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    Store.open(path)  # a second store on the same file, in this process
    assert reads == []
    first.conn.close()
