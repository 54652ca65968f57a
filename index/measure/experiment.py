"""`solu experiment`: the SoLU paper's experiment as one command.

A grid of cells, one per (activation, number of layers, seed). Every cell trains a model
(`solu train`), indexes it into a database of its own (`solu index`), and the driver then
copies its index into the experiment's one database and explains and scores it (`solu
autolabel`). Every cell of a seed shares its init seed and data order, and every cell
the tokenizer, trained once; so two cells that differ in the activation differ in
nothing else.

Training and indexing are tasks: in a pool of worker processes on this machine (sized to
its cores by default; they talk over pipes, nothing listens on the network), or as Ray
tasks on an existing cluster with --address, asking each for a GPU with --device cuda;
--workers 1 runs them in this process instead. Each task uses the same torch threads
(Grid.threads) however it runs, so the tables do not depend on where a cell ran. A
finished cell is recorded in `experiment_cells` and skipped by a rerun; a cell killed
while training resumes from its checkpoint (train_state.pt); one killed while indexing
indexes again. OUT/experiment.json holds the grid; a rerun with another grid is refused.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from solu.errors import UserError
from solu.flags import cores

ACTS = ("gelu", "solu_ln")
GRID_FILE = "experiment.json"
TOKENIZER_FILE = "tokenizer.json"
STAGES = ("trained", "indexed", "scored")


@dataclass(frozen=True)
class Grid:
    """What an experiment runs: activations x layer counts x seeds, every cell with the
    same shape per layer, training tokens, dataset and index tokens."""
    acts: tuple[str, ...] = ACTS
    layers: tuple[int, ...] = (1, 2)
    seeds: tuple[int, ...] = (0, 1, 2)
    d_model: int = 128
    d_mlp: int = 512
    heads: int = 4
    ctx: int = 128
    vocab: int = 4096
    tokens: int = 2_000_000
    dataset: str = "builtin"
    index_tokens: int = 1_000_000
    batch_size: int = 16
    eval_tokens: int = 65_536
    warmup_tokens: int = 100_000
    checkpoint_every: int = 100  # training steps between checkpoints (a killed cell resumes from the last)
    threads: int = 1  # torch threads of every task, wherever it runs
    name: str = "experiment"

    def __post_init__(self):
        if not self.acts or any(a not in ACTS for a in self.acts) or len(set(self.acts)) != len(self.acts):
            raise ValueError(f"--acts takes distinct activations among {', '.join(ACTS)}")
        for flag, values in (("--layers", self.layers), ("--seeds", self.seeds)):
            if not values or len(set(values)) != len(values):
                raise ValueError(f"{flag} takes distinct values, at least one")
        if any(n < 1 or n > 64 for n in self.layers):
            raise ValueError("--layers takes layer counts from 1 to 64")
        if any(s < 0 or s > 2**31 - 1 for s in self.seeds):
            raise ValueError("--seeds takes seeds from 0 to 2,147,483,647")
        for flag, value in (("--d-model", self.d_model), ("--d-mlp", self.d_mlp), ("--heads", self.heads),
                            ("--ctx", self.ctx), ("--vocab", self.vocab), ("--tokens", self.tokens),
                            ("--index-tokens", self.index_tokens), ("--threads", self.threads),
                            ("--checkpoint-every", self.checkpoint_every)):
            if value < 1:
                raise ValueError(f"{flag} must be at least 1, got {value}")
        for n_layers in self.layers:  # every cell's configs are valid (their bounds hold) before any work
            self.train_configs(self.acts[0], n_layers, self.seeds[0], "cpu")
        self.index_config("cpu")

    def train_configs(self, act: str, n_layers: int, seed: int, device: str):
        """The ModelConfig and TrainConfig of one cell (ValueError where a flag is out of bounds)."""
        from solu.config import ModelConfig, TrainConfig

        model = ModelConfig(act_fn=act, n_layers=n_layers, d_model=self.d_model, d_mlp=self.d_mlp,
                            n_heads=self.heads, n_ctx=self.ctx, d_vocab=self.vocab)
        train = TrainConfig(dataset=self.dataset, tokens=self.tokens, batch_size=self.batch_size, seed=seed,
                            device=device, eval_tokens=self.eval_tokens, warmup_tokens=self.warmup_tokens,
                            checkpoint_every=self.checkpoint_every)
        return model, train

    def index_config(self, device: str):
        from index.engine.config import IndexConfig

        return IndexConfig(dataset=self.dataset, tokens=self.index_tokens, device=device, seed=0)

    def cells(self) -> list["Cell"]:
        return [Cell(a, n, s) for n in self.layers for s in self.seeds for a in self.acts]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Grid":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


QUICK = dict(layers=(1, 2), seeds=(0, 1), d_model=32, d_mlp=64, heads=2, ctx=32, vocab=320, tokens=16_384,
             index_tokens=8_192, eval_tokens=2_048, warmup_tokens=2_048, checkpoint_every=4)


@dataclass(frozen=True)
class Cell:
    act: str
    n_layers: int
    seed: int

    @property
    def model_id(self) -> str:
        return f"{self.act.removesuffix('_ln')}-{self.n_layers}l-s{self.seed}"


@dataclass
class CellResult:
    model_id: str
    stage: str
    seconds: float | None
    eval_loss: float | None = None
    db: str | None = None
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------- the tasks (run in a worker, on Ray, or here)

@contextlib.contextmanager
def _quiet():
    """tqdm's bars off while inside."""
    old = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old


def _task(work):
    """A cell's step as a task: the grid's torch threads, and its own progress bars off
    (the experiment's one bar covers the grid)."""
    @functools.wraps(work)
    def run(out: str, grid: Grid, cell: Cell, device: str) -> CellResult:
        import torch

        torch.set_num_threads(grid.threads)
        with _quiet():
            return work(out, grid, cell, device)
    return run


@_task
def train_cell(out: str, grid: Grid, cell: Cell, device: str) -> CellResult:
    """Train the cell's model (resume a checkpoint left by a kill; keep a finished one)."""
    from solu.checkpoint import read_meta
    from solu.train import train

    start = time.perf_counter()
    path = Path(out) / "runs" / cell.model_id
    meta = _meta(path, read_meta)
    if meta and meta.get("complete"):  # trained by a run that was stopped later
        return CellResult(cell.model_id, "trained", meta.get("train_seconds"), meta.get("eval_loss"))
    if meta and (path / "train_state.pt").exists():
        meta = train(None, None, path, resume=True)
    else:
        mcfg, tcfg = grid.train_configs(cell.act, cell.n_layers, cell.seed, device)
        meta = train(mcfg, tcfg, path, force=True, tokenizer_path=str(Path(out) / TOKENIZER_FILE))
    return CellResult(cell.model_id, "trained", meta.get("train_seconds", time.perf_counter() - start),
                      meta["eval_loss"])


@_task
def index_cell(out: str, grid: Grid, cell: Cell, device: str) -> CellResult:
    """Index the trained cell into a database of its own (OUT/runs/MODEL.duckdb), afresh."""
    from index.build import build_index
    from solu.sources import resolve

    start = time.perf_counter()
    db = Path(out) / "runs" / f"{cell.model_id}.duckdb"
    for stale in (db, db.with_name(db.name + ".wal")):
        stale.unlink(missing_ok=True)
    build_index([resolve(str(Path(out) / "runs" / cell.model_id))], grid.index_config(device), db, progress=False)
    return CellResult(cell.model_id, "indexed", time.perf_counter() - start, db=str(db))


def _meta(path: Path, read_meta) -> dict | None:
    try:
        return read_meta(path)
    except UserError:
        return None


# ---------------------------------------------------------------- the driver

def check_out(out: Path, grid: Grid) -> None:
    """OUT is new, or holds this grid's experiment (a rerun resumes it); never another's."""
    from solu.outputs import check_out_dir

    check_out_dir(out, "--out")
    saved = out / GRID_FILE
    if saved.exists():
        try:
            old = Grid.from_dict(json.loads(saved.read_text(encoding="utf-8")))
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            raise UserError(f"--out {out}: {saved} is not an experiment's grid ({e})") from None
        if old != grid:
            changed = [k for k, v in grid.to_dict().items() if old.to_dict().get(k) != v]
            raise UserError(f"--out {out} holds an experiment with other settings ({', '.join(changed)}); "
                            "rerun it with the same flags to resume, or pick another --out")
    elif out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {out} is a folder this command did not create; pick a new one")


def finished(db: Path, grid: Grid) -> set[str]:
    """The model ids of the cells already in the database."""
    from index.store.connection import open_read
    from index.store.queries import has_table

    if not db.exists():
        return set()
    with open_read(db) as con:
        if not has_table(con, "experiment_cells"):
            return set()
        rows = con.execute("SELECT model_id FROM experiment_cells WHERE experiment = ?", [grid.name]).fetchall()
        return {r[0] for r in rows}


def prepare(out: Path, grid: Grid) -> Path:
    """The folder, the grid file, the shared tokenizer and the database; returns the database."""
    from solu.batches import training_texts
    from solu.config import TrainConfig
    from solu.corpus import iter_documents
    from solu.outputs import write_text
    from solu.tokenizer import train_tokenizer
    from solu.train import TOKENIZER_CHARS

    (out / "runs").mkdir(parents=True, exist_ok=True)
    if not (out / GRID_FILE).exists():
        write_text(out / GRID_FILE, json.dumps(grid.to_dict(), indent=2) + "\n", "--out")
    tok = out / TOKENIZER_FILE
    if not tok.exists():
        docs = iter_documents(grid.dataset, seed=grid.seeds[0], shuffle=TrainConfig.shuffle)
        texts = training_texts(docs, TOKENIZER_CHARS)
        write_text(tok, train_tokenizer(texts, grid.vocab).to_str(), "--out")
    db = out / "index.duckdb"
    if not db.exists():  # an empty index, made the way `solu index` makes one (atomically)
        from index.store.writer import IndexBuild

        with IndexBuild(db) as build:
            build.commit()
    from index.store.connection import open_write

    with open_write(db) as con:
        con.execute("INSERT OR IGNORE INTO experiments (experiment, grid) VALUES (?, ?)",
                    [grid.name, json.dumps(grid.to_dict())])
    return db


def merge_cell(db: Path, cell_db: Path, grid: Grid, cell: Cell) -> None:
    """Replace the cell's model in the experiment's database by its own index, in one transaction."""
    from index.store.connection import open_write, sql_path
    from index.store.schema import INDEX_TABLES

    with open_write(db) as con:
        con.execute(f"ATTACH '{sql_path(cell_db)}' AS cell (READ_ONLY)")
        con.execute("BEGIN")
        try:
            for table in INDEX_TABLES:
                con.execute(f"DELETE FROM {table} WHERE model_id = ?", [cell.model_id])
                con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM cell.{table} WHERE model_id = ?",
                            [cell.model_id])
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        con.execute("DETACH cell")


def record_cell(db: Path, grid: Grid, cell: Cell, seconds: dict, eval_loss: float | None) -> None:
    from index.store.connection import open_write

    with open_write(db) as con:
        con.execute("INSERT OR REPLACE INTO experiment_cells (experiment, model_id, act_fn, n_layers, seed, eval_loss, "
                    "train_s, index_s, score_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [grid.name, cell.model_id, cell.act, cell.n_layers, cell.seed, eval_loss,
                     seconds.get("trained"), seconds.get("indexed"), seconds.get("scored")])


def score_cell(db: Path, cell: Cell, workers: int | None) -> float:
    from index.measure.autolabel import autolabel

    start = time.perf_counter()
    autolabel(db, [cell.model_id], workers=workers)
    return time.perf_counter() - start


def run_experiment(out: Path, grid: Grid, *, workers: int | None = None, address: str | None = None,
                   device: str = "cpu", progress: bool = True) -> Path:
    """Run every unfinished cell of the grid; returns the experiment's database."""
    from tqdm import tqdm

    out = Path(out).resolve()  # tasks on a cluster (--address) need the path whole; it must be shared
    check_out(out, grid)
    workers = workers or max(1, cores() // grid.threads)
    db = prepare(out, grid)
    cells = grid.cells()
    done = finished(db, grid)
    todo = [c for c in cells if c.model_id not in done]
    bar = tqdm(total=len(cells) * len(STAGES), initial=len(done) * len(STAGES), desc=f"experiment {grid.name}",
               unit="step", disable=not progress)
    seconds: dict[str, dict] = {c.model_id: {} for c in todo}
    pooled = workers > 1 or bool(address)
    losses: dict[str, float | None] = {}

    def finish(result: CellResult) -> None:
        cell = next(c for c in todo if c.model_id == result.model_id)
        seconds[cell.model_id][result.stage] = result.seconds
        bar.update(1)
        if result.stage == "trained":
            losses[cell.model_id] = result.eval_loss
            return
        merge_cell(db, Path(result.db), grid, cell)
        # beside workers that hold the cores, score in this process (no fork of a threaded driver)
        seconds[cell.model_id]["scored"] = score_cell(db, cell, 1 if pooled else None)
        record_cell(db, grid, cell, seconds[cell.model_id], losses.get(cell.model_id, result.eval_loss))
        for name in (result.db, result.db + ".wal", result.db + ".lock"):  # the cell's own database, merged
            Path(name).unlink(missing_ok=True)
        bar.set_postfix_str(f"{cell.model_id} done")
        bar.update(1)

    try:
        if not pooled:
            for cell in todo:
                finish(train_cell(str(out), grid, cell, device))
                finish(index_cell(str(out), grid, cell, device))
        elif not address:
            _run_local(out, grid, todo, workers, device, finish)
        else:
            _run_on_ray(out, grid, todo, address, device, finish)
    finally:
        bar.close()
    return db


def _run_local(out: Path, grid: Grid, todo: list[Cell], workers: int, device: str, finish) -> None:
    """Every cell trained, then indexed, in a pool of `workers` processes on this machine
    (spawned; they talk over pipes, so nothing listens on the network); results handled
    as they come. A failed or killed worker ends the run in one line."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from index.engine.local_shards import stop_pool
    from solu.errors import first_line

    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        pending = {pool.submit(train_cell, str(out), grid, cell, device): cell for cell in todo}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                cell = pending.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    raise UserError(f"cell {cell.model_id}: its worker process died (killed, out of memory or "
                                    "crashed); rerun the same command to resume") from None
                except Exception as e:  # noqa: BLE001 - a cell's own error, reported in one line
                    raise UserError(f"a cell failed: {first_line(e)[:300]}") from None
                if result.stage == "trained":
                    pending[pool.submit(_index_after, str(out), grid, cell, device, result)] = cell
                finish(result)
    except BaseException:
        stop_pool(pool)  # no worker outlives a failed run
        raise
    pool.shutdown(wait=True)


def _run_on_ray(out: Path, grid: Grid, todo: list[Cell], address: str, device: str, finish) -> None:
    """Every cell as two chained Ray tasks (train, then index) on the cluster at `address`,
    results handled as they come."""
    import logging

    try:
        import ray
    except ImportError:
        raise UserError("--address runs the cells on a Ray cluster: pip install 'solu-neuron-explorer[ray]'") \
            from None
    from solu.errors import first_line

    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise UserError(f"cannot join the Ray cluster at {address}: {first_line(e)[:300]}") from None
        started = True
    try:
        gpus = 1 if device == "cuda" else 0
        train_task = ray.remote(num_cpus=grid.threads, num_gpus=gpus, max_retries=0)(_train_then)
        index_task = ray.remote(num_cpus=grid.threads, num_gpus=gpus, max_retries=0)(_index_after)
        pending = {}
        for cell in todo:
            trained = train_task.remote(str(out), grid, cell, device)
            pending[trained] = "train"
            pending[index_task.remote(str(out), grid, cell, device, trained)] = "index"
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayTaskError as e:
                cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else e
                raise UserError(f"a cell failed: {first_line(cause)[:300]}") from None
            finish(result)
    finally:
        if started:
            ray.shutdown()


def _train_then(out: str, grid: Grid, cell: Cell, device: str) -> CellResult:
    return train_cell(out, grid, cell, device)


def _index_after(out: str, grid: Grid, cell: Cell, device: str, trained: CellResult) -> CellResult:
    """Index a cell once its training (`trained`, the train task's result) is done."""
    return dataclasses.replace(index_cell(out, grid, cell, device), eval_loss=trained.eval_loss)
