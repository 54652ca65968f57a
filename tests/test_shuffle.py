"""The seeded document shuffle: a corpus sorted by source reaches training and indexing
mixed, the same seed gives the same order, memory stays within the buffer, and a run
passes its dataset through the buffer once, whoever reads it."""
from __future__ import annotations

import itertools
import json

from solu import corpus
from solu.cli import main
from solu.config import ModelConfig, TrainConfig
from solu.corpus import Document, DocumentOrder, iter_documents, shuffled
from index.engine.config import IndexConfig
from helpers.corpora import shuffle_fills


def sorted_corpus(path, n=400):
    """A corpus sorted by source: 380 prose documents, then 20 base64 ones."""
    rows = [{"text": f"prose document {i} about cats.", "source": "prose"} for i in range(n - 20)]
    rows += [{"text": f"key: QUJDREVGR0hJSktMTU5PUFFSU1RVVldY{i:04d}", "source": "b64"} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_shuffle_mixes_a_sorted_corpus_and_is_seeded(tmp_path):
    path = sorted_corpus(tmp_path / "c.jsonl")
    in_order = [d.text for d in iter_documents(str(path))]
    mixed = [d.text for d in iter_documents(str(path), seed=3, shuffle=True)]
    assert sorted(mixed) == sorted(in_order) and mixed != in_order
    first_quarter = mixed[:100]
    assert 1 <= sum("QUJD" in t for t in first_quarter) <= 15  # base64 is no longer all at the end
    assert [d.text for d in iter_documents(str(path), seed=3, shuffle=True)] == mixed
    assert [d.text for d in iter_documents(str(path), seed=4, shuffle=True)] != mixed
    assert [d.id for d in iter_documents(str(path), seed=3, shuffle=True)] == list(range(400))


def test_the_buffer_bounds_what_is_held():
    held = []

    def docs():
        for i in range(1000):
            held.append(i)
            yield Document(i, "x" * 10, "s", i)

    out = []
    for doc in shuffled(docs(), seed=0, max_docs=50, max_chars=10**9):
        out.append(doc)
        assert len(held) - len(out) <= 50
    assert len(out) == 1000
    held.clear()

    def long_docs():
        for i in range(30):
            held.append(i)
            yield Document(i, "y" * 100, "s", i)

    out = []
    for doc in shuffled(long_docs(), 0, max_docs=10**6, max_chars=250):  # 250 characters: at most 2 such documents
        out.append(doc)
        assert len(held) - len(out) <= 2
    assert len(out) == 30


def test_a_run_order_is_the_shuffle_of_iter_documents(tmp_path, monkeypatch):
    """DocumentOrder gives every reading the documents iter_documents(..., shuffle=True)
    gives, in its order, also for a dataset longer than the buffer (50 documents here),
    and readings may overtake one another; the buffer is filled once."""
    path = str(sorted_corpus(tmp_path / "c.jsonl"))
    shuffled_50 = corpus.shuffled
    monkeypatch.setattr(corpus, "shuffled", lambda docs, seed: shuffled_50(docs, seed, max_docs=50))
    want = list(iter_documents(path, seed=3, shuffle=True))
    assert [d.position for d in want] != list(range(400))  # shuffled, but only within the buffer's reach:
    assert all(d.position <= d.id + 50 for d in want)  # a document leaves it at most 50 places early
    fills = shuffle_fills(monkeypatch)
    order = DocumentOrder(path, seed=3, shuffle=True)
    first, second = iter(order), iter(order)
    head = list(itertools.islice(first, 30))
    assert list(second) == want and head + list(first) == want and list(order) == want
    assert fills == [3]


def test_a_training_run_fills_the_shuffle_buffer_once(tmp_path, monkeypatch):
    """The tokenizer's text, the eval split and every epoch read one DocumentOrder."""
    from solu.train import train

    path = str(sorted_corpus(tmp_path / "c.jsonl"))
    readings, read = [], DocumentOrder.__iter__
    monkeypatch.setattr(DocumentOrder, "__iter__", lambda self: readings.append(self) or read(self))
    fills = shuffle_fills(monkeypatch)
    shape = ModelConfig(act_fn="gelu", n_layers=1, d_model=32, d_mlp=64, n_heads=2, n_ctx=32, d_vocab=300)
    train(shape, TrainConfig(dataset=path, tokens=24 * 8 * 32, batch_size=8, eval_tokens=256, warmup_tokens=256,
                             seed=3, device="cpu", shuffle=True), tmp_path / "run")
    assert len(readings) >= 4 and len(set(map(id, readings))) == 1  # tokenizer, eval, two epochs or more
    assert fills == [3]


def test_builtin_keeps_its_own_order():
    """builtin is shuffled when built; --shuffle does not shuffle it again."""
    import itertools

    assert IndexConfig().shuffle is False and TrainConfig().shuffle is True
    first = [d.text for d in itertools.islice(iter_documents("builtin", shuffle=False), 50)]
    assert [d.text for d in itertools.islice(iter_documents("builtin", shuffle=True), 50)] == first


def test_the_flag_takes_on_or_off(tmp_path, capsys):
    assert main(["train", "--act", "gelu", "--shuffle", "maybe", "--out", str(tmp_path / "x")]) == 2
    assert "expected on or off" in capsys.readouterr().err


def test_the_checkpoint_and_the_index_run_record_it(tiny_checkpoints, tiny_corpus, tmp_path):
    import duckdb

    from index.build import build_index

    meta = json.loads((tiny_checkpoints["gelu"] / "config.json").read_text())
    assert meta["train"]["shuffle"] is True
    db = tmp_path / "s.duckdb"
    for shuffle in (False, True):
        cfg = IndexConfig(dataset=str(tiny_corpus), tokens=3000, device="cpu", shuffle=shuffle, sample_tokens=3000)
        list(build_index([tiny_checkpoints["gelu"]], cfg, db, name=f"g-{shuffle}"))
    con = duckdb.connect(str(db), read_only=True)
    recorded = dict(con.execute("SELECT model_id, config->>'shuffle' FROM index_details").fetchall())
    texts = {m: con.execute("SELECT list(token ORDER BY doc_id, pos) FROM tokens WHERE model_id = ?",
                            [m]).fetchone()[0] for m in recorded}
    con.close()
    assert recorded == {"g-False": "false", "g-True": "true"}
    assert texts["g-False"] != texts["g-True"]  # another order reaches the budget
