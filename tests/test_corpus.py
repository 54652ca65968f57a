"""Dataset readers: every format, the builtin corpus, and each kind of bad input."""
import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from solu.corpus import (ReadStats, build_builtin, builtin_composition, check_dataset, is_eval_document,
                         iter_documents)
from solu.errors import UserError


def texts(spec, **kw):
    return [d.text for d in iter_documents(spec, **kw)]


def test_reads_txt_jsonl_parquet_and_folders(tmp_path):
    (tmp_path / "a.txt").write_text("first document\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"body": "second"}) + "\n\n" + json.dumps({"body": "third"}) + "\n")
    pq.write_table(pa.table({"body": ["fourth", None, "fifth"]}), tmp_path / "c.parquet")
    assert texts(str(tmp_path / "a.txt")) == ["first document\n"]
    assert texts(str(tmp_path / "b.jsonl"), text_column="body") == ["second", "third"]
    assert texts(str(tmp_path / "c.parquet"), text_column="body") == ["fourth", "fifth"]
    (tmp_path / "a.txt").unlink()
    assert texts(str(tmp_path), text_column="body") == ["second", "third", "fourth", "fifth"]
    docs = list(iter_documents(str(tmp_path), text_column="body"))
    assert [d.id for d in docs] == [0, 1, 2, 3]


def test_long_txt_is_streamed_in_chunks_that_keep_every_character(tmp_path):
    line = "x" * 99 + "\n"
    (tmp_path / "big.txt").write_text(line * 2000)
    chunks = texts(str(tmp_path / "big.txt"))
    assert len(chunks) > 1 and "".join(chunks) == line * 2000


def test_binary_and_non_utf8_txt_files_are_skipped_and_counted(tmp_path):
    (tmp_path / "good.txt").write_text("hello")
    (tmp_path / "nul.txt").write_bytes(b"abc\x00def")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    stats = ReadStats()
    assert [d.text for d in iter_documents(str(tmp_path), stats=stats)] == ["hello"]
    assert sorted(p.rsplit("/", 1)[1] for p in stats.skipped_files) == ["latin1.txt", "nul.txt"]
    assert "skipped 2 binary or non-UTF-8" in stats.summary()


@pytest.mark.parametrize("content, message", [
    ('{"text": "ok"}\nnot json\n', r"b\.jsonl:2: not a JSON object"),
    ('{"text": "ok"}\n{"other": 1}\n', r"b\.jsonl:2: no 'text' field"),
    ('{"text": 5}\n', r"b\.jsonl:1: field 'text' is not a string"),
])
def test_bad_jsonl_lines_name_the_line(tmp_path, content, message):
    (tmp_path / "b.jsonl").write_text(content)
    with pytest.raises(UserError, match=message):
        texts(str(tmp_path / "b.jsonl"))


def test_missing_empty_and_unsupported_datasets(tmp_path):
    with pytest.raises(UserError, match="not found"):
        check_dataset(str(tmp_path / "nope.txt"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="contains no usable text"):
        check_dataset(str(tmp_path / "empty.txt"))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="unsupported file type"):
        check_dataset(str(tmp_path / "data.csv"))
    (tmp_path / "sub").mkdir()
    with pytest.raises(UserError, match="holds no"):
        check_dataset(str(tmp_path / "sub"))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match="not a readable parquet"):
        check_dataset(str(tmp_path / "bad.parquet"))
    (tmp_path / "only-binary.txt").write_bytes(b"\x00\x01\x02")
    with pytest.raises(UserError, match="contains no usable text.*skipped 1"):
        check_dataset(str(tmp_path / "only-binary.txt"))


def test_hf_dataset_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match="cannot load Hugging Face dataset 'no-such/dataset'"):
        check_dataset("hf:no-such/dataset:train")


def test_eval_split_is_a_stable_minority():
    docs = [f"document number {i}" for i in range(4000)]
    held = [d for d in docs if is_eval_document(d)]
    assert 0.03 < len(held) / len(docs) < 0.08
    assert held == [d for d in docs if is_eval_document(d)]


def test_builtin_corpus_is_large_varied_and_deterministic(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    composition = build_builtin(a, seed=0)
    build_builtin(b, seed=0)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    assert composition == builtin_composition(a)
    assert sum(mb for _, mb in composition.values()) >= 20
    assert set(composition) == {"stdlib", "docstring", "pydoc", "base64", "pem"}
    first = json.loads(a.open().readline())
    assert set(first) == {"text", "source"}


def test_builtin_reads_the_standard_library_only_and_records_its_sha256(tmp_path, monkeypatch):
    """The corpus is a function of the Python minor version and the seed: it opens no file
    outside the standard library, and its sha256 (beside it) is the file's."""
    import builtins
    import sysconfig

    from solu import corpus

    stdlib = sysconfig.get_paths()["stdlib"]
    opened = []
    real_open = builtins.open

    def watch(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", watch)
    monkeypatch.setenv("SOLU_CACHE", str(tmp_path))
    path = corpus.builtin_path(3)
    monkeypatch.setattr(builtins, "open", real_open)
    read = [p for p in opened if not p.startswith(str(tmp_path))]
    assert read and all(p.startswith(stdlib) for p in read), [p for p in read if not p.startswith(stdlib)][:3]
    assert corpus.builtin_hash(3) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert corpus.dataset_hash("builtin", 3) == corpus.builtin_hash(3)
    assert corpus.dataset_hash(str(path), 3) is None


def test_runs_record_the_corpus_they_read(tiny_checkpoints, tmp_path):
    """An index run on builtin records the corpus's sha256; one on a local file records
    none; a checkpoint's config says which it read."""
    import duckdb

    from solu.checkpoint import read_meta
    from solu.cli import main
    from solu.corpus import builtin_hash

    db = tmp_path / "i.duckdb"
    assert main(["index", str(tiny_checkpoints["gelu"]), "--db", str(db), "--dataset", "builtin", "--tokens", "2000",
                 "--no-progress"]) == 0
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT dataset_sha256 FROM index_runs").fetchall() == [(builtin_hash(0),)]
    con.close()
    meta = read_meta(tiny_checkpoints["gelu"])
    assert "dataset_sha256" in meta and meta["dataset_sha256"] is None  # trained on a local file
