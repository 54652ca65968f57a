"""Careless and hostile input, table-driven, across every command.

Each case runs `solu ...` in this process and asserts: exit code 2, exactly one line on
standard error, no traceback, and every file under the shared fixture folder (the
database, its read-only copies, an existing output file, checkpoints) byte-identical
afterwards, with no file added or removed: a failed command leaves nothing behind.
The app and the demo's work are replaced by tripwires, so a case that would start
them fails instead of taking this process over.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from solu.cli import main
from helpers.synthetic_index import build_synthetic_index

M = "gelu-synth"  # a model of the synthetic index (2 layers x 64 neurons)
HUGE = "1e308"
BIG_INT = "99999999999999999999"

# (id, argv); {names} are fixture paths (see `paths` below)
CASES: list[tuple[str, list[str]]] = [
    # ---------------------------------------------------------------- usage
    ("no-command", []),
    ("unknown-command", ["frobnicate"]),
    ("unknown-flag", ["sql", "--db", "{db}", "--bogus", "SELECT 1"]),
    ("labels-no-action", ["labels"]),
    ("study-no-action", ["study"]),
    # ---------------------------------------------------------------- sql
    ("sql-missing-db", ["sql", "--db", "{missing}", "SELECT 1"]),
    ("sql-junk-db", ["sql", "--db", "{junk}", "SELECT 1"]),
    ("sql-update-extensions", ["sql", "--db", "{db}", "UPDATE EXTENSIONS"]),
    ("sql-corrupt-db", ["sql", "--db", "{corrupt}", "SELECT 1"]),
    ("label-corrupt-db", ["label", "--db", "{corrupt}", M, "0", "0", "x"]),
    ("export-corrupt-db", ["labels", "export", "--db", "{corrupt}"]),
    *[(f"{cmd[0]}-schema-version-not-a-number", [*cmd[1], "{bad_version}", *cmd[2]]) for cmd in (
        ("sql", ["sql", "--db"], ["SELECT 1"]), ("label", ["label", "--db"], [M, "0", "0", "x"]),
        ("index", ["index", "{ckpt}", "--dataset", "{corpus}", "--db"], []), ("app", ["app", "--db"], []))],
    ("sql-db-is-dir", ["sql", "--db", "{dir}", "SELECT 1"]),
    ("sql-empty", ["sql", "--db", "{db}", "   "]),
    ("sql-delete", ["sql", "--db", "{db}", "DELETE FROM labels"]),
    ("sql-update", ["sql", "--db", "{db}", "UPDATE neurons SET max_act = 0"]),
    ("sql-drop", ["sql", "--db", "{db}", "DROP TABLE neurons"]),
    ("sql-create", ["sql", "--db", "{db}", "CREATE TABLE t AS SELECT 1"]),
    ("sql-insert", ["sql", "--db", "{db}", "INSERT INTO labels (label_id) VALUES (1)"]),
    ("sql-two-statements", ["sql", "--db", "{db}", "SELECT 1; SELECT 2"]),
    ("sql-copy-out", ["sql", "--db", "{db}", "COPY neurons TO '{root}/copied.csv'"]),
    ("sql-copy-select", ["sql", "--db", "{db}", "COPY (SELECT 1) TO '{existing}'"]),
    ("sql-attach", ["sql", "--db", "{db}", "ATTACH '{root}/other.duckdb'"]),
    ("sql-install", ["sql", "--db", "{db}", "INSTALL httpfs"]),
    ("sql-load", ["sql", "--db", "{db}", "LOAD httpfs"]),
    ("sql-set", ["sql", "--db", "{db}", "SET enable_external_access = true"]),
    ("sql-pragma", ["sql", "--db", "{db}", "PRAGMA version"]),
    ("sql-call", ["sql", "--db", "{db}", "CALL pragma_version()"]),
    ("sql-explain-delete", ["sql", "--db", "{db}", "EXPLAIN ANALYZE DELETE FROM examples"]),
    ("sql-read-csv", ["sql", "--db", "{db}", "SELECT * FROM read_csv('{existing}')"]),
    ("sql-read-text", ["sql", "--db", "{db}", "SELECT * FROM read_text('/etc/passwd')"]),
    ("sql-read-dot-tmp", ["sql", "--db", "{db}", "SELECT * FROM read_csv('{root}/.tmp/c.csv')"]),
    ("sql-read-relative-dot-tmp", ["sql", "--db", "{db}", "SELECT * FROM read_csv('.tmp/c.csv')"]),
    ("sql-glob", ["sql", "--db", "{db}", "SELECT * FROM glob('{root}/*')"]),
    ("sql-http", ["sql", "--db", "{db}", "SELECT * FROM 'https://example.com/x.csv'"]),
    ("sql-bad-syntax", ["sql", "--db", "{db}", "SELEC nonsense"]),
    ("sql-no-table", ["sql", "--db", "{db}", "SELECT * FROM nosuch"]),
    ("sql-invalid-utf8", ["sql", "--db", "{db}", "SELECT '\udcff'"]),
    ("sql-repeat-3e9", ["sql", "--db", "{db}", "SELECT length(repeat('x', 3000000000))"]),
    ("sql-cross-join", ["sql", "--db", "{db}", "--timeout", "1",
                        "SELECT count(*) FROM range(1000000) a, range(1000000) b"]),
    ("sql-endless-cte", ["sql", "--db", "{db}", "--timeout", "1",
                         "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"]),
    ("sql-format", ["sql", "--db", "{db}", "--format", "xml", "SELECT 1"]),
    *[(f"sql-timeout-{v}", ["sql", "--db", "{db}", "--timeout", v, "SELECT 1"])
      for v in ("nan", "inf", "-inf", "-1", "0", HUGE, "1e9", "ten")],
    *[(f"sql-max-rows-{v}", ["sql", "--db", "{db}", "--max-rows", v, "SELECT 1"])
      for v in ("-1", "nan", "1.5", BIG_INT)],
    # ---------------------------------------------------------------- label
    ("label-missing-db", ["label", "--db", "{missing}", M, "0", "0", "x"]),
    ("label-junk-db", ["label", "--db", "{junk}", M, "0", "0", "x"]),
    ("label-unknown-model", ["label", "--db", "{db}", "nosuch", "0", "0", "x"]),
    ("label-layer-out-of-range", ["label", "--db", "{db}", M, "2", "0", "x"]),
    ("label-neuron-out-of-range", ["label", "--db", "{db}", M, "0", "64", "x"]),
    ("label-negative-neuron", ["label", "--db", "{db}", M, "0", "-1", "x"]),
    ("label-negative-layer", ["label", "--db", "{db}", M, "-1", "0", "x"]),
    ("label-layer-not-int", ["label", "--db", "{db}", M, "one", "0", "x"]),
    ("label-huge-neuron", ["label", "--db", "{db}", M, "0", BIG_INT, "x"]),
    ("label-invalid-utf8", ["label", "--db", "{db}", M, "0", "0", "bad \udcff"]),
    ("label-note-invalid-utf8", ["label", "--db", "{db}", M, "0", "0", "x", "--note", "\udcfe"]),
    ("label-author-invalid-utf8", ["label", "--db", "{db}", M, "0", "0", "x", "--author", "\udcfd"]),
    ("label-too-long", ["label", "--db", "{db}", M, "0", "0", "x" * 10_001]),
    ("label-read-only-db", ["label", "--db", "{ro_db}", M, "0", "0", "x"]),
    ("label-read-only-folder", ["label", "--db", "{rodir_db}", M, "0", "0", "x"]),
    ("label-db-is-dir", ["label", "--db", "{dir}", M, "0", "0", "x"]),
    # ---------------------------------------------------------------- labels export
    ("export-over-its-db", ["labels", "export", "--db", "{db}", "--out", "{db}"]),
    ("export-over-its-db-forced", ["labels", "export", "--db", "{db}", "--out", "{db}", "--force"]),
    ("export-over-existing", ["labels", "export", "--db", "{db}", "--out", "{existing}"]),
    ("export-jsonl-over-existing", ["labels", "export", "--db", "{db}", "--format", "jsonl", "--out", "{existing}"]),
    ("export-into-dir", ["labels", "export", "--db", "{db}", "--out", "{dir}"]),
    ("export-missing-folder", ["labels", "export", "--db", "{db}", "--out", "{root}/nope/labels.csv"]),
    ("export-under-a-file", ["labels", "export", "--db", "{db}", "--out", "{existing}/labels.csv"]),
    ("export-dev-full", ["labels", "export", "--db", "{db}", "--out", "/dev/full"]),
    ("export-dev-full-forced", ["labels", "export", "--db", "{db}", "--out", "/dev/full", "--force"]),
    ("export-read-only-folder", ["labels", "export", "--db", "{db}", "--out", "{rodir}/labels.csv"]),
    ("export-read-only-file-forced", ["labels", "export", "--db", "{db}", "--out", "{ro_db}", "--force"]),
    ("export-missing-db", ["labels", "export", "--db", "{missing}", "--out", "{root}/new.csv"]),
    ("export-junk-db", ["labels", "export", "--db", "{junk}"]),
    ("export-format", ["labels", "export", "--db", "{db}", "--format", "xlsx"]),
    ("export-source", ["labels", "export", "--db", "{db}", "--source", "robot"]),
    # ---------------------------------------------------------------- study
    ("study-missing-db", ["study", "create", "--db", "{missing}", "s1", "--models", M, "solu-synth"]),
    ("study-junk-db", ["study", "create", "--db", "{junk}", "s1", "--models", M, "solu-synth"]),
    *[(f"study-{flag[2:]}-beyond-int32", ["study", "create", "--db", "{db}", "s1", "--models", M, "solu-synth", flag, v])
      for flag, v in (("--per-model", "2147483648"), ("--seed", "99999999999"), ("--snippets", "3000000000"))],
    ("study-read-only-db", ["study", "create", "--db", "{ro_db}", "s1", "--models", M, "solu-synth"]),
    ("study-read-only-folder", ["study", "create", "--db", "{rodir_db}", "s1", "--models", M, "solu-synth"]),
    ("study-one-model", ["study", "create", "--db", "{db}", "s1", "--models", M]),
    ("study-same-model-twice", ["study", "create", "--db", "{db}", "s1", "--models", M, M]),
    ("study-unknown-model", ["study", "create", "--db", "{db}", "s1", "--models", M, "nosuch"]),
    ("study-empty-name", ["study", "create", "--db", "{db}", " ", "--models", M, "solu-synth"]),
    ("study-markup-name", ["study", "create", "--db", "{db}", "<script>", "--models", M, "solu-synth"]),
    ("study-long-name", ["study", "create", "--db", "{db}", "n" * 81, "--models", M, "solu-synth"]),
    ("study-invalid-utf8-name", ["study", "create", "--db", "{db}", "s\udcff", "--models", M, "solu-synth"]),
    *[(f"study-per-model-{v}", ["study", "create", "--db", "{db}", "s1", "--models", M, "solu-synth",
                                "--per-model", v]) for v in ("0", "-1", "nan", BIG_INT)],
    *[(f"study-snippets-{v}", ["study", "create", "--db", "{db}", "s1", "--models", M, "solu-synth",
                               "--snippets", v]) for v in ("0", "-5", "x")],
    ("study-seed-negative", ["study", "create", "--db", "{db}", "s1", "--models", M, "solu-synth", "--seed", "-1"]),
    ("study-summary-missing-db", ["study", "summary", "--db", "{missing}", "s1"]),
    ("study-summary-junk-db", ["study", "summary", "--db", "{junk}", "s1"]),
    ("study-summary-unknown", ["study", "summary", "--db", "{db}", "nosuch"]),
    # ---------------------------------------------------------------- autolabel
    ("autolabel-no-db", ["autolabel"]),
    ("autolabel-missing-db", ["autolabel", "--db", "{missing}"]),
    ("autolabel-junk-db", ["autolabel", "--db", "{junk}"]),
    ("autolabel-read-only-db", ["autolabel", "--db", "{ro_db}", "--concepts", "number"]),
    ("autolabel-read-only-folder", ["autolabel", "--db", "{rodir_db}", "--concepts", "number"]),
    ("autolabel-unknown-model", ["autolabel", "--db", "{db}", "--models", "nosuch"]),
    ("autolabel-unknown-concept", ["autolabel", "--db", "{db}", "--concepts", "nosuch"]),
    ("autolabel-regex-no-name", ["autolabel", "--db", "{db}", "--regex", "abc"]),
    ("autolabel-regex-taken-name", ["autolabel", "--db", "{db}", "--regex", "base64=abc"]),
    ("autolabel-regex-repeated-name", ["autolabel", "--db", "{db}", "--regex", "a=x", "--regex", "a=y"]),
    ("autolabel-regex-unbalanced", ["autolabel", "--db", "{db}", "--regex", "bad=(a"]),
    ("autolabel-regex-backreference", ["autolabel", "--db", "{db}", "--regex", r"twice=(a)\1"]),
    ("autolabel-regex-lookbehind", ["autolabel", "--db", "{db}", "--regex", "lb=(?<=a)b"]),
    ("autolabel-regex-lookahead", ["autolabel", "--db", "{db}", "--regex", "la=a(?=b)"]),
    ("autolabel-regex-huge-repeat", ["autolabel", "--db", "{db}", "--regex", "big=((a{1000}){1000}){1000}"]),
    ("autolabel-regex-invalid-utf8", ["autolabel", "--db", "{db}", "--regex", "u=\udcff"]),
    ("autolabel-concept-regex-bad", ["autolabel", "--db", "{db}", "--concepts", "regex:(("]),
    *[(f"autolabel-threshold-{v}", ["autolabel", "--db", "{db}", "--threshold", v])
      for v in ("nan", "inf", "-0.5", "2", HUGE)],
    # ---------------------------------------------------------------- match
    ("match-no-db", ["match", M, "solu-synth"]),
    ("match-one-model", ["match", "--db", "{db}", M]),
    ("match-missing-db", ["match", "--db", "{missing}", M, "solu-synth"]),
    ("match-junk-db", ["match", "--db", "{junk}", M, "solu-synth"]),
    ("match-same-model", ["match", "--db", "{db}", M, M]),
    ("match-unknown-model", ["match", "--db", "{db}", M, "nosuch"]),
    ("match-no-sample", ["match", "--db", "{db}", M, "solu-synth"]),
    ("match-read-only-db", ["match", "--db", "{ro_db}", M, "solu-synth"]),
    *[(f"match-top-{v}", ["match", "--db", "{db}", M, "solu-synth", "--top", v]) for v in ("0", "-1", "x", HUGE)],
    # ---------------------------------------------------------------- shuffle, connections, ablation flags
    *[(f"index-{flag[2:]}-{v}", ["index", "{ckpt}", "--dataset", "{corpus}", "--db", "{root}/new.duckdb", flag, v])
      for flag, v in (("--shuffle", "maybe"), ("--shuffle", ""), ("--ablation", "2"), ("--connection-k", "-1"),
                      ("--connection-k", "x"))],
    ("train-shuffle-maybe", ["train", "--act", "gelu", "--dataset", "{corpus}", "--out", "{root}/run",
                             "--shuffle", "maybe"]),
    # ---------------------------------------------------------------- compare
    ("compare-db-group-overlap", ["compare", "--db", "{db}", f"{M},solu-synth", "solu-synth", "--out", "{root}/r"]),
    ("compare-db-empty-group", ["compare", "--db", "{db}", ",", "solu-synth", "--out", "{root}/r"]),
    ("compare-missing-checkpoint", ["compare", "{root}/nope"]),
    ("compare-file-checkpoint", ["compare", "{existing}"]),
    ("compare-dir-not-checkpoint", ["compare", "{dir}"]),
    ("compare-out-without-db", ["compare", "{ckpt}", "--out", "{root}/report"]),
    ("compare-db-one-model", ["compare", "--db", "{db}", M]),
    ("compare-db-missing", ["compare", "--db", "{missing}", M, "solu-synth"]),
    ("compare-db-junk", ["compare", "--db", "{junk}", M, "solu-synth"]),
    ("compare-db-unknown-model", ["compare", "--db", "{db}", M, "nosuch", "--out", "{root}/report"]),
    ("compare-out-is-file", ["compare", "--db", "{db}", M, "solu-synth", "--out", "{existing}"]),
    ("compare-out-read-only", ["compare", "--db", "{db}", M, "solu-synth", "--out", "{rodir}/report"]),
    *[(f"compare-threshold-{v}", ["compare", "--db", "{db}", M, "solu-synth", "--threshold", v,
                                  "--out", "{root}/report"]) for v in ("nan", "inf", "-1")],
    # ---------------------------------------------------------------- app
    ("app-missing-db", ["app", "--db", "{missing}"]),
    ("app-junk-db", ["app", "--db", "{junk}"]),
    ("app-db-is-dir", ["app", "--db", "{dir}"]),
    ("app-empty-duckdb", ["app", "--db", "{empty_duckdb}"]),
    *[(f"app-port-{v}", ["app", "--db", "{db}", "--port", v]) for v in ("70000", "0", "-1", "nan", "http")],
    ("app-bogus-host", ["app", "--db", "{db}", "--host", "bogus host"]),
    *[(f"app-host-{name}", ["app", "--db", "{db}", "--host", v]) for name, v in (("empty", ""), ("blank", " "),
                                                                                ("padded", " 127.0.0.1"))],
    ("demo-host-empty", ["demo", "--out", "{root}/demo", "--host", ""]),
    ("app-remote-host", ["app", "--db", "{db}", "--host", "192.0.2.1"]),
    ("app-host-invalid-utf8", ["app", "--db", "{db}", "--host", "h\udcff"]),
    # ---------------------------------------------------------------- demo
    ("demo-port-70000", ["demo", "--out", "{root}/demo", "--port", "70000"]),
    ("demo-bogus-host", ["demo", "--out", "{root}/demo", "--host", "bogus host"]),
    ("demo-tokens-0", ["demo", "--out", "{root}/demo", "--tokens", "0", "--no-app"]),
    ("demo-index-tokens-0", ["demo", "--out", "{root}/demo", "--index-tokens", "0", "--no-app"]),
    ("demo-tokens-negative", ["demo", "--out", "{root}/demo", "--tokens", "-1", "--no-app"]),
    ("demo-tokens-huge", ["demo", "--out", "{root}/demo", "--tokens", BIG_INT, "--no-app"]),
    ("demo-out-is-file", ["demo", "--out", "{existing}", "--no-app"]),
    ("demo-out-under-file", ["demo", "--out", "{existing}/demo", "--no-app"]),
    ("demo-out-read-only", ["demo", "--out", "{rodir}/demo", "--no-app"]),
    ("demo-cache-is-file", ["demo", "--out", "{root}/demo", "--no-app", "@SOLU_CACHE={existing}"]),
    ("demo-cache-read-only", ["demo", "--out", "{root}/demo", "--no-app", "@SOLU_CACHE={rodir}/cache"]),
    # ---------------------------------------------------------------- corpus
    ("corpus-cache-is-file", ["corpus", "--seed", "12345", "@SOLU_CACHE={existing}"]),
    ("corpus-cache-read-only", ["corpus", "--seed", "12345", "@SOLU_CACHE={rodir}/cache"]),
    ("corpus-seed-negative", ["corpus", "--seed", "-3"]),
    # ---------------------------------------------------------------- train
    ("train-no-act", ["train", "--out", "{root}/run"]),
    ("train-bad-act", ["train", "--act", "relu", "--out", "{root}/run"]),
    ("train-no-out", ["train", "--act", "gelu"]),
    ("train-device-cuda", ["train", "--act", "gelu", "--device", "cuda", "--dataset", "{corpus}", "--out", "{root}/run"]),
    ("train-device-tpu", ["train", "--act", "gelu", "--device", "tpu", "--out", "{root}/run"]),
    ("train-out-is-file", ["train", "--act", "gelu", "--dataset", "{corpus}", "--out", "{existing}"]),
    ("train-out-under-file", ["train", "--act", "gelu", "--dataset", "{corpus}", "--out", "{existing}/run"]),
    ("train-out-read-only", ["train", "--act", "gelu", "--dataset", "{corpus}", "--out", "{rodir}/run"]),
    ("train-out-exists", ["train", "--act", "gelu", "--dataset", "{corpus}", "--out", "{ckpt}"]),
    ("train-resume-nothing", ["train", "--resume", "--out", "{dir}"]),
    ("train-resume-truncated", ["train", "--resume", "--out", "{truncated_run}"]),
    # a FIFO or a device where a file is read: refused before it is opened (a FIFO blocked, /dev/zero never ended)
    ("train-tokenizer-fifo", ["train", "--act", "gelu", "--dataset", "{corpus}", "--tokenizer", "{fifo}",
                              "--out", "{root}/run"]),
    ("train-tokenizer-dev-zero", ["train", "--act", "gelu", "--dataset", "{corpus}", "--tokenizer", "/dev/zero",
                                  "--out", "{root}/run"]),
    ("train-tokenizer-empty", ["train", "--act", "gelu", "--dataset", "{corpus}", "--tokenizer", "",
                               "--out", "{root}/run"]),
    ("train-resume-config-fifo", ["train", "--resume", "--out", "{fifo_config}"]),
    ("train-resume-state-fifo", ["train", "--resume", "--out", "{fifo_state}"]),
    ("index-tokenizer-not-the-models", ["index", "{big_tokenizer}", "--db", "{root}/new.duckdb",
                                        "--dataset", "{corpus}"]),
    ("index-config-fifo", ["index", "{fifo_config}", "--db", "{root}/new.duckdb", "--dataset", "{corpus}"]),
    ("index-tokenizer-fifo", ["index", "{fifo_tokenizer}", "--db", "{root}/new.duckdb", "--dataset", "{corpus}"]),
    ("compare-config-fifo", ["compare", "{fifo_config}", "{ckpt}"]),
    ("train-resume-and-force", ["train", "--resume", "--force", "--out", "{ckpt}"]),
    ("train-resume-with-shape", ["train", "--resume", "--layers", "3", "--out", "{ckpt}"]),
    ("train-resume-fewer-tokens", ["train", "--resume", "--tokens", "1", "--out", "{ckpt}"]),
    ("train-vocab-1e12", ["train", "--act", "gelu", "--vocab", "1000000000000", "--out", "{root}/run"]),
    ("train-vocab-small", ["train", "--act", "gelu", "--vocab", "100", "--out", "{root}/run"]),
    ("train-heads-not-dividing", ["train", "--act", "gelu", "--d-model", "30", "--heads", "4", "--out", "{root}/run"]),
    ("train-missing-dataset", ["train", "--act", "gelu", "--dataset", "{root}/nope.jsonl", "--out", "{root}/run"]),
    ("train-empty-dataset", ["train", "--act", "gelu", "--dataset", "{empty_txt}", "--out", "{root}/run"]),
    ("train-missing-tokenizer", ["train", "--act", "gelu", "--dataset", "{corpus}", "--tokenizer", "{root}/nope.json",
                                 "--out", "{root}/run"]),
    ("train-cache-is-file", ["train", "--act", "gelu", "--out", "{root}/run", "@SOLU_CACHE={existing}"]),
    *[(f"train-{flag.strip('-')}-{v}", ["train", "--act", "gelu", flag, v, "--out", "{root}/run"])
      for flag in ("--layers", "--d-model", "--d-mlp", "--heads", "--ctx", "--tokens", "--batch-size",
                   "--eval-tokens", "--checkpoint-every")
      for v in ("0", "-1", "nan")],
    *[(f"train-{flag.strip('-')}-{v}", ["train", "--act", "gelu", flag, v, "--out", "{root}/run"])
      for flag in ("--lr", "--min-lr-ratio", "--weight-decay", "--grad-clip")
      for v in ("nan", "inf", "-1", HUGE)],
    ("train-layers-huge", ["train", "--act", "gelu", "--layers", BIG_INT, "--out", "{root}/run"]),
    ("train-ctx-absurd", ["train", "--act", "gelu", "--ctx", "100000000", "--out", "{root}/run"]),
    # ---------------------------------------------------------------- index
    ("index-missing-model", ["index", "{root}/nope", "--db", "{root}/new.duckdb", "--dataset", "{corpus}"]),
    ("index-model-is-file", ["index", "{existing}", "--db", "{root}/new.duckdb", "--dataset", "{corpus}"]),
    ("index-model-not-checkpoint", ["index", "{dir}", "--db", "{root}/new.duckdb", "--dataset", "{corpus}"]),
    ("index-read-only-db", ["index", "{ckpt}", "--db", "{ro_db}", "--dataset", "{corpus}"]),
    ("index-read-only-folder", ["index", "{ckpt}", "--db", "{rodir}/new.duckdb", "--dataset", "{corpus}"]),
    ("index-read-only-folder-db", ["index", "{ckpt}", "--db", "{rodir_db}", "--dataset", "{corpus}"]),
    ("index-db-is-dir", ["index", "{ckpt}", "--db", "{dir}", "--dataset", "{corpus}"]),
    ("index-db-junk", ["index", "{ckpt}", "--db", "{junk}", "--dataset", "{corpus}"]),
    ("index-db-missing-folder", ["index", "{ckpt}", "--db", "{root}/nope/new.duckdb", "--dataset", "{corpus}"]),
    ("index-missing-dataset", ["index", "{ckpt}", "--db", "{root}/new.duckdb", "--dataset", "{root}/nope.txt"]),
    ("index-empty-dataset", ["index", "{ckpt}", "--db", "{root}/new.duckdb", "--dataset", "{empty_txt}"]),
    ("index-device-cuda", ["index", "{ckpt}", "--db", "{root}/new.duckdb", "--dataset", "{corpus}",
                           "--device", "cuda", "--no-progress"]),
    ("index-threads-0", ["index", "{ckpt}", "--db", "{root}/new.duckdb", "--dataset", "{corpus}", "--threads", "0"]),
    *[(f"index-{flag.strip('-')}-{v}", ["index", "{ckpt}", "--db", "{root}/new.duckdb", "--dataset", "{corpus}",
                                        flag, v])
      for flag in ("--tokens", "--top-k", "--hist-bins", "--stats-every")
      for v in ("0", "-1", "nan")],
    *[(f"index-batch-size-{v}", ["index", "{ckpt}", "--db", "{root}/new.duckdb", "--dataset", "{corpus}",
                                 "--batch-size", v]) for v in ("-1", "nan", BIG_INT)],  # 0 means automatic
    *[(f"index-{flag.strip('-')}-{v}", ["index", "{ckpt}", "--db", "{root}/new.duckdb", "--dataset", "{corpus}",
                                        flag, v])
      for flag in ("--window-before", "--window-after", "--per-band", "--random", "--sample-tokens", "--logit-k")
      for v in ("-1", BIG_INT)],
    *[(f"index-threshold-{v}", ["index", "{ckpt}", "--db", "{root}/new.duckdb", "--dataset", "{corpus}",
                                "--threshold", v]) for v in ("nan", "inf", "-0.1", "1", HUGE)],
    ("index-dtype", ["index", "{ckpt}", "--db", "{root}/new.duckdb", "--dataset", "{corpus}", "--dtype", "int4"]),
    ("index-layers-garbage", ["index", "{ckpt}", "--db", "{root}/new.duckdb", "--dataset", "{corpus}", "--layers", "x"]),
    ("index-layers-out-of-range", ["index", "{ckpt}", "--db", "{root}/new.duckdb", "--dataset", "{corpus}",
                                   "--layers", "7"]),
    ("index-name-two-models", ["index", "{ckpt}", "{ckpt}", "--name", "x", "--db", "{root}/new.duckdb",
                               "--dataset", "{corpus}"]),
    ("index-unknown-hub-id", ["index", "nosuch-org/nosuch-model", "--db", "{root}/new.duckdb", "--dataset", "{corpus}",
                              "@HF_HUB_OFFLINE=1"]),
    # ---------------------------------------------------------------- fetch (offline here)
    ("fetch-unknown", ["fetch", "nosuch-org/nosuch-model", "@HF_HUB_OFFLINE=1"]),
    ("fetch-invalid-utf8", ["fetch", "m\udcff"]),
    ("fetch-no-name", ["fetch"]),
    ("index-bands-101", ["index", "{ckpt}", "--db", "{root}/new.duckdb", "--dataset", "{corpus}", "--bands", "101"]),
    ("index-name-held-by-another-source", ["index", "{ckpt}", "--db", "{db}", "--dataset", "{corpus}",
                                           "--name", M]),
    *[(f"index-{flag[2:]}-0", ["index", "{ckpt}", "--db", "{root}/new.duckdb", "--dataset", "{corpus}", flag, "0"])
      for flag in ("--bands", "--band-candidates")],
    ("index-model-config-null", ["index", "{null_model}", "--db", "{root}/new.duckdb", "--dataset", "{corpus}"]),
    ("index-model-beyond-memory", ["index", "{huge_model}", "--db", "{root}/new.duckdb", "--dataset", "{corpus}"]),
    ("compare-model-config-null", ["compare", "{null_model}", "{ckpt}"]),
    ("train-beyond-memory", ["train", "--act", "gelu", "--d-model", "65536", "--d-mlp", "262144", "--heads", "1024",
                             "--vocab", "300000", "--out", "{root}/huge-run", "--tokens", "1000"]),  # ~360 GB
]


def test_there_are_enough_cases():
    ids = [c[0] for c in CASES]
    assert len(set(ids)) == len(ids)
    assert len(CASES) >= 150
    commands = {argv[0] for _, argv in CASES if argv}
    assert commands >= {"train", "fetch", "corpus", "index", "sql", "autolabel", "study", "compare", "app", "label",
                        "labels", "demo"}


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tiny_checkpoints, tiny_corpus) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    db = build_synthetic_index(root / "index.duckdb")
    p = {"root": root, "db": db, "corpus": tiny_corpus, "missing": root / "missing.duckdb"}
    p["junk"] = root / "junk.duckdb"
    p["junk"].write_text("not a database\n")
    p["existing"] = root / "existing.csv"
    p["existing"].write_text("somebody's file, not ours\n")
    p["empty_txt"] = root / "empty.txt"
    p["empty_txt"].write_text("")
    p["empty_duckdb"] = root / "empty.duckdb"
    import duckdb

    duckdb.connect(str(p["empty_duckdb"])).close()
    p["corrupt"] = root / "corrupt.duckdb"  # a damaged header block: DuckDB's checksum error names the "block"
    shutil.copyfile(db, p["corrupt"])
    with open(p["corrupt"], "r+b") as f:
        f.seek(4096)
        f.write(b"\xff" * 4096)
    p["bad_version"] = root / "bad-version.duckdb"
    shutil.copyfile(db, p["bad_version"])
    con = duckdb.connect(str(p["bad_version"]))
    con.execute("UPDATE meta SET value = 'seven' WHERE key = 'schema_version'")
    con.close()
    p["dir"] = root / "a-folder"
    p["dir"].mkdir()
    (root / ".tmp").mkdir()
    (root / ".tmp" / "c.csv").write_text("secret,1\n")
    p["ckpt"] = root / "ckpt"
    shutil.copytree(tiny_checkpoints["gelu"], p["ckpt"])
    for name, change in (("null_model", lambda meta: None),
                         ("huge_model", lambda meta: {**meta, "d_model": 65536, "d_mlp": 262144, "n_heads": 1024,
                                                      "n_layers": 1, "d_vocab": 300_000})):  # ~360 GB
        p[name] = root / name.replace("_", "-")
        shutil.copytree(tiny_checkpoints["gelu"], p[name])
        config = json.loads((p[name] / "config.json").read_text())
        config["model"] = change(config["model"])
        (p[name] / "config.json").write_text(json.dumps(config))
    from solu.tokenizer import train_tokenizer

    p["big_tokenizer"] = root / "big-tokenizer"
    shutil.copytree(tiny_checkpoints["gelu"], p["big_tokenizer"])
    texts = [json.loads(line)["text"] for line in Path(tiny_corpus).read_text().splitlines()]
    train_tokenizer(iter(texts), 600).save(str(p["big_tokenizer"] / "tokenizer.json"))
    p["fifo"] = root / "a-fifo"
    os.mkfifo(p["fifo"])
    for name, file in (("fifo_config", "config.json"), ("fifo_tokenizer", "tokenizer.json"),
                       ("fifo_state", "train_state.pt")):
        p[name] = root / name.replace("_", "-")
        shutil.copytree(tiny_checkpoints["gelu"], p[name])
        (p[name] / file).unlink()
        os.mkfifo(p[name] / file)
    p["truncated_run"] = root / "truncated-run"
    shutil.copytree(tiny_checkpoints["gelu"], p["truncated_run"])
    state = p["truncated_run"] / "train_state.pt"
    state.write_bytes(state.read_bytes()[:200])
    p["ro_db"] = root / "read-only.duckdb"
    shutil.copyfile(db, p["ro_db"])
    p["ro_db"].chmod(0o444)
    p["rodir"] = root / "read-only-folder"
    p["rodir"].mkdir()
    p["rodir_db"] = p["rodir"] / "index.duckdb"
    shutil.copyfile(db, p["rodir_db"])
    p["rodir"].chmod(0o555)
    yield p
    p["rodir"].chmod(0o755)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root with its content hash (folders as 'dir')."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else "fifo" if path.is_fifo() else hashlib.sha256(path.read_bytes()).hexdigest()
        out[rel] += oct(stat.S_IMODE(path.stat().st_mode))
    return out


@pytest.fixture
def tripwires(monkeypatch):
    """The app server and the demo's work must never start for a bad input."""
    import explorer.commands
    import explorer.demo

    def started(*_a, **_k):
        raise AssertionError("the command started its work despite a bad input")

    monkeypatch.setattr(explorer.commands, "serve", started)
    monkeypatch.setattr(explorer.demo, "run_demo", started)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, paths, tripwires, capsys, monkeypatch):
    _, template = case
    if "cuda" in template and _has_cuda():
        pytest.skip("--device cuda is a valid request on this machine")
    argv, env = [], {}
    for part in template:
        filled = part
        for key, value in paths.items():
            filled = filled.replace("{" + key + "}", str(value))
        if filled.startswith("@"):
            key, _, value = filled[1:].partition("=")
            env[key] = value
        else:
            argv.append(filled)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(paths["root"])
    before = snapshot(paths["root"])
    code = main(argv)
    captured = capsys.readouterr()
    err_lines = captured.err.splitlines()
    assert code == 2, captured.err
    assert len(err_lines) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    assert err_lines[0].startswith("solu") and "error" in err_lines[0]
    assert snapshot(paths["root"]) == before
    assert os.access(paths["ro_db"], os.R_OK)


def test_a_truncated_database_is_one_line_for_every_command(paths, tmp_path, capsys):
    """Cut the index short at several points: a command that cannot read what it needs
    says so in one line (exit 2, no traceback) and leaves the file's bytes as they were;
    at some cut DuckDB's own read error is what stops it, and that is one line too."""
    whole = paths["db"].read_bytes()
    io_errors = 0
    for fraction in (0.1, 0.5, 0.8, 0.9, 0.95):
        db = tmp_path / f"cut-{fraction}.duckdb"
        db.write_bytes(whole[:int(len(whole) * fraction)])
        for args in (["label", "--db", str(db), M, "0", "0", "x"], ["labels", "export", "--db", str(db)],
                     ["autolabel", "--db", str(db)], ["sql", "--db", str(db), "SELECT count(*) FROM examples"],
                     ["index", str(paths["ckpt"]), "--db", str(db), "--dataset", str(paths["corpus"]),
                      "--tokens", "200", "--no-progress"]):
            code = main(args)
            err = capsys.readouterr().err.strip().splitlines()
            if code == 0:  # what this command reads survived the cut (an index may then replace the file)
                continue
            assert code == 2 and len(err) == 1 and "Traceback" not in err[0], (fraction, args[0], err)
            io_errors += "damaged or truncated" in err[0]
            if args[0] != "index":
                assert db.read_bytes() == whole[:int(len(whole) * fraction)], (fraction, args[0])
    assert io_errors > 0


@pytest.mark.parametrize("argv", [
    ["index", "ckpt", "--db", ""], ["sql", "--db", "", "SELECT 1"], ["label", "--db", " ", "m", "0", "1", "x"],
    ["app", "--db", ""], ["train", "--act", "gelu", "--out", ""], ["experiment", "--out", "", "--quick"],
    ["compare", "--db", "", "a", "b"], ["study", "sheet", "--db", "x.duckdb", "s", "--rater", "r", "--out", ""],
])
def test_an_empty_path_is_one_line(argv, capsys):
    """`--db ''` and every other empty path flag: refused by the parser, in one line, before any work."""
    from solu.cli import main

    assert main(argv) == 2  # argparse's own refusal, in one line
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "an empty path is not a file or a folder" in err[0], err
