"""Datasets as streams of documents.

A SPEC is `builtin` (an offline corpus this module assembles from the standard library
every Python of a minor version has), a local .txt/.jsonl/.parquet file or a folder of
them, or `hf:NAME[:split]` (a Hugging Face dataset, streamed). Every reader yields one document at a time, so
memory does not grow with the corpus.
"""
from __future__ import annotations

import ast
import base64
import gzip
import hashlib
import json
import os
import random
import re
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from solu.errors import UserError, first_line

BUILTIN_VERSION = 2  # 2: the standard library and pydoc only (no system files), and its sha256
SHUFFLE_DOCS = 100_000  # the shuffle buffer holds at most this many documents
SHUFFLE_CHARS = 256 * 2**20  # and this much text
TXT_CHUNK_CHARS = 64_000  # a .txt file longer than this is read as several documents
LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Document:
    id: int  # its number in the order read: the file order, or the shuffled one
    text: str
    source: str
    position: int  # its number in the file order (the id before a shuffle)


@dataclass
class ReadStats:
    """What a reader passed over; reported to the user after a run."""

    skipped_files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.skipped_files:
            return ""
        files = list(dict.fromkeys(self.skipped_files))  # a file skipped on every reading counts once
        shown = ", ".join(files[:3])
        more = f" and {len(files) - 3} more" if len(files) > 3 else ""
        return f"skipped {len(files)} binary or non-UTF-8 file(s): {shown}{more}"


def cache_dir() -> Path:
    root = os.environ.get("SOLU_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "solu-explorer")
    return Path(root)


def iter_documents(spec: str, text_column: str = "text", stats: ReadStats | None = None,
                   seed: int = 0, shuffle: bool = False) -> Iterator[Document]:
    """Documents of a dataset SPEC, in a fixed order: the file order, or with `shuffle`
    an order seeded by `seed` (see shuffled; `builtin` is shuffled when it is built).
    Raises UserError for bad input."""
    stats = stats if stats is not None else ReadStats()
    if spec == "builtin":
        return _iter_jsonl(builtin_path(seed), "text", stats)
    docs = _iter_hf(spec[3:], text_column) if spec.startswith("hf:") else _iter_local(spec, text_column, stats)
    return shuffled(docs, seed) if shuffle else docs


def shuffled(docs: Iterator[Document], seed: int, max_docs: int = SHUFFLE_DOCS,
             max_chars: int = SHUFFLE_CHARS) -> Iterator[Document]:
    """A seeded shuffle buffer: documents pass through a buffer of at most max_docs
    documents and max_chars characters, and leave it at random. A dataset that fits the
    buffer is shuffled whole; a longer one (or a streamed hub dataset) is mixed within
    the buffer's reach, in memory bounded by it. Documents are renumbered in their new
    order, so ids still count up from 0; each keeps its file position."""
    rng = random.Random(f"shuffle:{seed}")
    buffer: list[Document] = []
    chars = 0
    out = 0

    def take() -> Document:
        nonlocal chars, out
        j = rng.randrange(len(buffer))
        buffer[j], buffer[-1] = buffer[-1], buffer[j]
        doc = buffer.pop()
        chars -= len(doc.text)
        out += 1
        return Document(out - 1, doc.text, doc.source, doc.position)

    for doc in docs:
        buffer.append(doc)
        chars += len(doc.text)
        while len(buffer) > max_docs or (chars > max_chars and len(buffer) > 1):
            yield take()
    while buffer:
        yield take()


class DocumentOrder:
    """The documents of a dataset SPEC in a run's order (iter_documents'), decided once:
    each iteration yields them again from the first, for every reader of the run (the
    tokenizer's text, the eval split, each training epoch).

    Where iter_documents shuffles, the dataset passes through the shuffle buffer once:
    the reading that gets furthest takes the buffer's next document and appends it to a
    spool, and every reading reads the spool. The spool is on disk, not in memory: an
    unlinked temporary file in the cache directory, gone with the process, holding each
    document read once as a JSON line, so at most the text of one pass over the dataset
    (of a streamed hub dataset, only what the run reads). A file order has nothing to
    decide: each iteration reads the dataset again."""

    def __init__(self, spec: str, text_column: str = "text", seed: int = 0, shuffle: bool = False):
        self.spec, self.text_column, self.seed = spec, text_column, seed
        self.shuffle = shuffle and spec != "builtin"  # iter_documents' rule: builtin is shuffled when built
        self.stats = ReadStats()
        self._buffer: Iterator[Document] | None = None  # the shuffle buffer's output, opened when first read
        self._spool = None
        self._spooled = 0  # documents in the spool

    def __iter__(self) -> Iterator[Document]:
        if not self.shuffle:
            return iter_documents(self.spec, self.text_column, self.stats, self.seed)
        return self._read()

    def _read(self) -> Iterator[Document]:
        offset, n = 0, 0  # this reading's place in the spool: bytes, documents
        while n < self._spooled or self._take():
            self._spool.seek(offset)
            line = self._spool.readline()
            offset, n = offset + len(line), n + 1
            yield Document(*json.loads(line))

    def _take(self) -> bool:
        """Append the shuffle buffer's next document to the spool; False at the dataset's end."""
        if self._buffer is None:
            from solu.outputs import check_out_dir

            self._buffer = iter_documents(self.spec, self.text_column, self.stats, self.seed, shuffle=True)
            check_out_dir(cache_dir(), "SOLU_CACHE")
            cache_dir().mkdir(parents=True, exist_ok=True)
            self._spool = tempfile.TemporaryFile(dir=cache_dir())
        doc = next(self._buffer, None)
        if doc is None:
            return False
        self._spool.seek(0, os.SEEK_END)
        self._spool.write(json.dumps([doc.id, doc.text, doc.source, doc.position]).encode("ascii") + b"\n")
        self._spooled += 1
        return True


USABLE = re.compile(r"[^\s\x00-\x1f\x7f]")  # a character a tokenizer can learn from


def check_dataset(spec: str, text_column: str = "text", seed: int = 0, whole: bool = True) -> int:
    """Read a local dataset through once, before any output is written, so a bad line or an
    empty dataset fails early with one clear line. Returns the number of documents with
    text. A Hugging Face dataset, or any with whole=False, is only checked as far as its
    first document with text (it exists, it is readable, it is not empty)."""
    stats = ReadStats()
    documents = 0
    for doc in iter_documents(spec, text_column, stats, seed):
        documents += bool(USABLE.search(doc.text))
        if documents and (spec.startswith("hf:") or not whole):
            break
    if not documents:
        detail = stats.summary()
        raise UserError(f"dataset {spec!r} contains no usable text "
                        f"({detail or 'nothing but white space and control characters'})")
    return documents


# ---------------------------------------------------------------- local files

def _local_files(spec: str) -> list[Path]:
    path = Path(spec)
    if not path.exists():
        raise UserError(f"dataset {spec!r} not found (expected 'builtin', 'hf:NAME' or a .txt/.jsonl/.parquet file or folder)")
    if path.is_file():
        if path.suffix not in LOCAL_SUFFIXES:
            raise UserError(f"dataset {spec!r}: unsupported file type {path.suffix or '(none)'}; use .txt, .jsonl or .parquet")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES)
    if not files:
        raise UserError(f"dataset folder {spec!r} holds no .txt, .jsonl or .parquet files")
    return files


def _iter_local(spec: str, text_column: str, stats: ReadStats) -> Iterator[Document]:
    files = _local_files(spec)  # raised here, before the first next(), for a clear error

    def generate():
        doc_id = 0
        for path in files:
            if path.suffix == ".txt":
                texts = _iter_txt(path, stats)
            elif path.suffix == ".jsonl":
                texts = (d.text for d in _iter_jsonl(path, text_column, stats))
            else:
                texts = _iter_parquet(path, text_column)
            for text in texts:
                yield Document(doc_id, text, str(path), doc_id)
                doc_id += 1

    return generate()


def _iter_txt(path: Path, stats: ReadStats) -> Iterator[str]:
    """A .txt file is one document, read in chunks that end at a line break. A file with
    NUL bytes or invalid UTF-8 is skipped and counted, not fatal."""
    try:
        with open(path, "rb") as f:
            head = f.read(8192)
        if b"\x00" in head:
            stats.skipped_files.append(str(path))
            return
        with open(path, encoding="utf-8") as f:
            chunk: list[str] = []
            size = 0
            for line in f:
                chunk.append(line)
                size += len(line)
                if size >= TXT_CHUNK_CHARS:
                    yield "".join(chunk)
                    chunk, size = [], 0
            if chunk:
                yield "".join(chunk)
    except UnicodeDecodeError:
        stats.skipped_files.append(str(path))
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None


def _iter_jsonl(path: Path | str, text_column: str, stats: ReadStats) -> Iterator[Document]:
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None

    def generate():
        with f:
            try:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        raise UserError(f"{path}:{lineno}: not a JSON object") from None
                    if not isinstance(row, dict) or text_column not in row:
                        raise UserError(f"{path}:{lineno}: no {text_column!r} field (set --text-column)")
                    text = row[text_column]
                    if not isinstance(text, str):
                        raise UserError(f"{path}:{lineno}: field {text_column!r} is not a string")
                    yield Document(lineno - 1, text, row.get("source", str(path)), lineno - 1)
            except UnicodeDecodeError:
                raise UserError(f"{path}: not UTF-8 text") from None

    return generate()


def _iter_parquet(path: Path, text_column: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise UserError(f"{path}: not a readable parquet file ({type(e).__name__})") from None
    if text_column not in pf.schema_arrow.names:
        raise UserError(f"{path}: no column {text_column!r} (columns: {', '.join(pf.schema_arrow.names)})")
    for batch in pf.iter_batches(columns=[text_column], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str):
                yield text


# ---------------------------------------------------------------- Hugging Face

def _iter_hf(name_split: str, text_column: str) -> Iterator[Document]:
    name, _, split = name_split.partition(":")
    if not name:
        raise UserError("hf: dataset needs a name, as in hf:NAME or hf:NAME:split")
    try:
        import datasets

        ds = datasets.load_dataset(name, split=split or "train", streaming=True)
        first = next(iter(ds))
    except Exception as e:  # offline, missing, gated: the hub raises many types
        reason = first_line(e)
        raise UserError(f"cannot load Hugging Face dataset {name!r} (offline or unavailable): {reason[:200]}") from None
    if text_column not in first:
        raise UserError(f"hf:{name} has no column {text_column!r} (columns: {', '.join(first)})")

    def generate():
        for i, row in enumerate(ds):
            yield Document(i, row[text_column], f"hf:{name}", i)

    return generate()


# ---------------------------------------------------------------- builtin corpus

def builtin_path(seed: int = 0) -> Path:
    """The builtin corpus as JSONL, built once per seed and cached (its sha256 beside it)."""
    path = cache_dir() / f"builtin-v{BUILTIN_VERSION}-py{sys.version_info[0]}{sys.version_info[1]}-seed{seed}.jsonl"
    if not path.exists() or not _hash_path(path).exists():
        from solu.outputs import check_out_dir

        check_out_dir(cache_dir(), "SOLU_CACHE")
        build_builtin(path, seed)
    return path


def builtin_hash(seed: int = 0) -> str:
    """The sha256 of the builtin corpus for `seed`: what a training or index run on
    `builtin` read, recorded with it. Equal hashes mean equal corpora, token for token."""
    return _hash_path(builtin_path(seed)).read_text(encoding="ascii").strip()


def dataset_hash(spec: str, seed: int) -> str | None:
    """The content hash recorded with a run: the builtin corpus's; None for other datasets."""
    return builtin_hash(seed) if spec == "builtin" else None


def _hash_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def build_builtin(path: Path, seed: int) -> dict:
    """Assemble the offline corpus from the standard library's sources and docstrings and
    pydoc's topics (so it depends on the Python minor version and the seed, not on what
    else the machine has installed), shuffle it with `seed`, and write it and its sha256
    atomically."""
    docs: list[tuple[str, str]] = []
    sources = [_stdlib_sources, _stdlib_docstrings, _pydoc_topics]
    for source in tqdm(sources, desc="building builtin corpus", unit="source"):
        docs.extend(source())
    rng = random.Random(seed)
    # base64 encodings of a random 5% of the prose and code, wrapped like MIME bodies, and
    # armoured blocks of random bytes (as keys and certificates look)
    encoded = [(f"base64:{src}", _mime_base64(text)) for src, text in rng.sample(docs, k=len(docs) * 5 // 100)]
    docs.extend(encoded)
    docs.extend((f"pem:{i}", _armoured(rng.randbytes(rng.randint(600, 1800)))) for i in range(PEM_BLOCKS))
    docs.sort()  # a fixed order before the seeded shuffle, whatever the file system's order
    rng.shuffle(docs)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for src, text in docs:
            line = json.dumps({"text": text, "source": src}) + "\n"
            digest.update(line.encode("utf-8"))
            f.write(line)
    os.replace(tmp, path)
    _hash_path(path).write_text(digest.hexdigest() + "\n", encoding="ascii")
    composition = builtin_composition(path)
    print(format_composition(composition), file=sys.stderr)
    print(f"sha256 {digest.hexdigest()}", file=sys.stderr)
    return composition


def builtin_composition(path: Path) -> dict:
    """{kind: (documents, MB)} of a built corpus, where kind is the source's prefix."""
    out: dict[str, list[float]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            kind = row["source"].split(":", 1)[0]
            entry = out.setdefault(kind, [0, 0.0])
            entry[0] += 1
            entry[1] += len(row["text"].encode("utf-8")) / 1e6
    return {k: (int(n), round(mb, 2)) for k, (n, mb) in sorted(out.items())}


def format_composition(composition: dict) -> str:
    lines = [f"{'source':<12} {'documents':>10} {'MB':>8}"]
    for kind, (n, mb) in composition.items():
        lines.append(f"{kind:<12} {n:>10} {mb:>8.2f}")
    total_n = sum(n for n, _ in composition.values())
    total_mb = sum(mb for _, mb in composition.values())
    lines.append(f"{'total':<12} {total_n:>10} {total_mb:>8.2f}")
    return "\n".join(lines)


def _read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if path.endswith(".gz"):
            raw = gzip.decompress(raw)
        if b"\x00" in raw:
            return None
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
        return None


def _stdlib_files() -> list[str]:
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__"))
        files.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    return files


def _stdlib_sources() -> list[tuple[str, str]]:
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for path in _stdlib_files():
        text = _read_text(path)
        if text and text.strip():
            out.append((f"stdlib:{os.path.relpath(path, root)}", text))
    return out


def _stdlib_docstrings() -> list[tuple[str, str]]:
    """English prose: each non-test module's docstrings joined into one document."""
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for path in _stdlib_files():
        rel = os.path.relpath(path, root)
        if rel.startswith(("test", "idlelib/idle_test")):
            continue
        text = _read_text(path)
        try:
            tree = ast.parse(text or "")
        except (SyntaxError, ValueError):
            continue
        parts = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 80:
                    parts.append(doc)
        if parts:
            out.append((f"docstring:{rel}", "\n\n".join(parts)))
    return out


def _pydoc_topics() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics

    return [(f"pydoc:{name}", text) for name, text in sorted(topics.items())]


PEM_BLOCKS = 200  # armoured base64 blocks in the builtin corpus


def _armoured(data: bytes) -> str:
    body = base64.b64encode(data).decode("ascii")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN ENCODED DATA-----\n" + "\n".join(lines) + "\n-----END ENCODED DATA-----\n"


def _mime_base64(text: str) -> str:
    body = base64.b64encode(text[:6000].encode("utf-8")).decode("ascii")
    lines = [body[i:i + 76] for i in range(0, len(body), 76)]
    return "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n" + "\n".join(lines) + "\n"


def is_eval_document(text: str) -> bool:
    """About 1 document in 20 is held out for evaluation, chosen by a hash of its text,
    so the split is disjoint and stable whatever the order or the shard."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=2).digest()[0] < 13
