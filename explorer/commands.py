"""Subcommands of the explorer: app, label, labels, demo."""
from __future__ import annotations

import errno
import os
import socket
import sys
from pathlib import Path

from explorer.urls import DEFAULT_HOST, DEFAULT_PORT, LOOPBACK, app_url
from solu.config import MOST_TOKENS
from solu.errors import UserError
from solu.flags import count, path

APP = Path(__file__).with_name("app.py")


def register(sub) -> None:
    p = sub.add_parser("app", help="start the Streamlit explorer on an index (listens on 127.0.0.1)")
    p.add_argument("--db", required=True, type=path, help="the DuckDB file 'solu index' wrote")
    _serve_args(p)
    p.set_defaults(func=cmd_app)

    p = sub.add_parser("label", help="label a neuron, or show its label history (labels are never overwritten)")
    p.add_argument("--db", required=True, type=path)
    p.add_argument("model", help="model id, as in the neurons table")
    p.add_argument("layer", type=int)
    p.add_argument("neuron", type=int)
    p.add_argument("label", nargs="?", help="the new label ('' clears it); omit to print the history")
    p.add_argument("--note", default="")
    p.add_argument("--author", default=os.environ.get("SOLU_AUTHOR"), help="who wrote it (default $SOLU_AUTHOR)")
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("labels", help="work with all labels")
    lsub = p.add_subparsers(dest="labels_command", required=True, metavar="ACTION")
    e = lsub.add_parser("export", help="write labels as CSV or JSON lines")
    e.add_argument("--db", required=True, type=path)
    e.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    e.add_argument("--out", type=path, help="file to write (default: standard output)")
    e.add_argument("--history", action="store_true", help="every change, not only the current labels")
    e.add_argument("--source", choices=("human", "auto"), help="only human or only automatic labels")
    e.add_argument("--force", action="store_true", help="replace --out if it exists (never the database itself)")
    e.set_defaults(func=cmd_labels_export)

    p = sub.add_parser("demo", help="build the corpus, train a GELU and a SoLU model, index both, start the app")
    p.add_argument("--out", type=path, default=Path("runs/demo"), help="working directory (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="tiny models and token counts (a minute; for tests)")
    p.add_argument("--tokens", type=count(*MOST_TOKENS), help="training tokens per model (default 2M, --quick 16k)")
    p.add_argument("--index-tokens", type=count(*MOST_TOKENS), help="tokens to index per model (default 1M, --quick 8k)")
    p.add_argument("--no-app", action="store_true", help="stop after indexing and labelling")
    p.add_argument("--force", action="store_true", help="rebuild everything even if --out has it, and build in an --out that "
                                                      "holds other files too (never replaced)")
    _serve_args(p)
    p.set_defaults(func=cmd_demo)


def _serve_args(p) -> None:
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 serves the network)")


def check_index(db: Path) -> None:
    """Raise UserError unless `db` is a readable solu index."""
    from index.store.connection import open_read

    open_read(db).close()


def check_port(host: str, port: int) -> None:
    if not host.strip() or host != host.strip():  # an empty address would listen on every interface
        raise UserError(f"--host must be an address of this machine (127.0.0.1: this machine only; 0.0.0.0: "
                        f"the network), got {host!r}")
    if not 1 <= port <= 65535:
        raise UserError(f"--port must be between 1 and 65535, got {port}")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except socket.gaierror:
            raise UserError(f"--host {host!r} is not an address of this machine") from None
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} on {host} is in use; pick another with --port") from None
            raise UserError(f"cannot listen on {host} port {port}: {e.strerror}") from None


def streamlit_command(db: Path, host: str, port: int) -> tuple[list[str], dict]:
    """The `streamlit run` command line and environment that serve the explorer."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP),
           "--server.address", host, "--server.port", str(port), "--server.headless", "true",
           "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
           "--client.toolbarMode", "minimal"]
    env = {**os.environ, "SOLU_DB": str(db.resolve())}
    return cmd, env


def serve(db: Path, host: str, port: int) -> None:
    """Replace this process with the Streamlit server (Ctrl-C stops it)."""
    cmd, env = streamlit_command(db, host, port)
    where = "" if host in LOOPBACK else f", listening on {host}"
    print(f"SoLU Neuron Explorer on {db}: {app_url(host, port)}{where}  (Ctrl-C to stop)", flush=True)
    if host not in LOOPBACK:
        print(f"warning: --host {host} makes the explorer reachable from the network, with no login: anyone who "
              "reaches this port can read the index and write labels", file=sys.stderr, flush=True)
    os.execve(sys.executable, cmd, env)


def cmd_app(args) -> int:
    check_index(args.db)
    check_port(args.host, args.port)
    serve(args.db, args.host, args.port)
    return 0


def cmd_label(args) -> int:
    from index.store import queries
    from index.store.connection import open_read
    from index.store.labels import append_label

    with open_read(args.db) as con:
        if not queries.neuron_exists(con, args.model, args.layer, args.neuron):
            raise UserError(f"no neuron {args.model} L{args.layer} N{args.neuron} in {args.db}")
        history = queries.label_history(con, args.model, args.layer, args.neuron) if args.label is None else None
    if history is not None:
        print(history.to_string(index=False) if not history.empty else "no labels yet")
        return 0
    append_label(args.db, args.model, args.layer, args.neuron, args.label.strip(), args.note, author=args.author)
    print(f"{args.model} L{args.layer} N{args.neuron}: {args.label.strip() or '(cleared)'}")
    return 0


def cmd_labels_export(args) -> int:
    from index.store import queries
    from index.store.connection import open_read
    from solu.outputs import check_out_file, write_text

    if args.out:
        check_out_file(args.out, "--out", force=args.force, inputs=(args.db,))
    with open_read(args.db) as con:
        df = queries.export_labels(con, history=args.history, source=args.source)
    if args.format == "csv":
        text = df.to_csv(index=False)
    else:
        text = df.to_json(orient="records", lines=True, date_format="iso", force_ascii=False)
        text = text if not text or text.endswith("\n") else text + "\n"
    if args.out:
        write_text(args.out, text, "--out")
        print(f"{len(df)} labels written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_demo(args) -> int:
    from explorer.demo import check_demo_out, demo_plan, run_demo

    demo_plan(args.quick, args.tokens, args.index_tokens)  # every flag is checked before any work
    check_demo_out(args.out, args.force)
    if not args.no_app:
        check_port(args.host, args.port)
    db = run_demo(args.out, quick=args.quick, tokens=args.tokens, index_tokens=args.index_tokens, force=args.force,
                  app=app_url(args.host, args.port))
    if args.no_app:
        print(f"index ready: {db}\nstart the app with: solu app --db {db}")
        return 0
    check_port(args.host, args.port)
    serve(db, args.host, args.port)
    return 0
