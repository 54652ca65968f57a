"""Subcommands that measure interpretability: autolabel, study, and compare (checkpoints side
by side, or with --db the interpretability report on two indexed models)."""
from __future__ import annotations

import sys
from pathlib import Path

from solu.config import MOST_TOKENS
from solu.errors import UserError
from solu.flags import count, path


def register(sub) -> None:
    from index.measure.autolabel import RULE_SHARE

    p = sub.add_parser("autolabel", help="score every neuron on concept detectors and suggest labels")
    p.add_argument("--db", type=path, help="the index to score (required unless --list)")
    p.add_argument("--models", nargs="+", metavar="MODEL", help="model ids (default: every model)")
    p.add_argument("--concepts", nargs="+", metavar="CONCEPT",
                   help="built-in concepts or regex:PATTERN (default: every built-in; see --list)")
    p.add_argument("--regex", action="append", default=[], metavar="NAME=PATTERN",
                   help="add a concept of your own: tokens inside matches of PATTERN (repeatable)")
    p.add_argument("--threshold", type=float, default=RULE_SHARE,
                   help="suggest a neuron's best concept when at least this share of its top examples peak on it "
                        f"(default {RULE_SHARE:g}, the paper's 80%% rule)")
    p.add_argument("--list", action="store_true", help="list the built-in concepts and exit")
    p.add_argument("--workers", type=int, default=None,
                   help="processes that score explanations (default: every core)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_autolabel)

    p = sub.add_parser("study", help="the blinded interpretability study: create one, or print its results")
    ssub = p.add_subparsers(dest="study_command", required=True, metavar="ACTION")
    c = ssub.add_parser("create", help="sample neurons from two or more models for raters (on the app's Study page)")
    c.add_argument("--db", required=True, type=path)
    c.add_argument("name")
    c.add_argument("--models", nargs="+", required=True, metavar="MODEL")
    c.add_argument("--per-model", type=count(10_000, "neurons a study asks raters about"), default=50, help="neurons sampled per model (default 50)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--snippets", type=count(1000, "snippets on one sheet"), default=20, help="top snippets shown per neuron (default 20)")
    c.set_defaults(func=cmd_study_create)
    h = ssub.add_parser("sheet", help="write a rater's blinded sheet (markdown) for rating offline")
    h.add_argument("--db", required=True, type=path)
    h.add_argument("name")
    h.add_argument("--rater", required=True, help="the rater's name: the sheet is in their own order")
    h.add_argument("--out", required=True, type=path, help="the sheet's file (a new file; --force replaces one)")
    h.add_argument("--force", action="store_true", help="replace --out if it exists")
    h.set_defaults(func=cmd_study_sheet)
    w = ssub.add_parser("answer", help="record a rater's answers from a CSV of item,answer[,label] (sheet numbers)")
    w.add_argument("--db", required=True, type=path)
    w.add_argument("name")
    w.add_argument("--rater", required=True)
    w.add_argument("--file", required=True, type=path, help="CSV with a header: item,answer[,label]")
    w.set_defaults(func=cmd_study_answer)
    s = ssub.add_parser("summary", help="unblind: fraction interpretable per model with a 95%% CI, and the "
                                        "agreement of the answers with the automated measures")
    s.add_argument("--db", required=True, type=path)
    s.add_argument("name")
    s.set_defaults(func=cmd_study_summary)

    p = sub.add_parser("compare", help="print checkpoints side by side; with --db, report on two indexed models")
    p.add_argument("checkpoints", nargs="+", metavar="MODEL",
                   help="checkpoint directories or other MODEL specs (solu-2l, gpt2, ./my-model), "
                        "or with --db two model ids, or two comma-separated groups of them (training seeds: "
                        "gelu-s0,gelu-s1,gelu-s2 solu-s0,solu-s1,solu-s2)")
    p.add_argument("--db", type=path, help="an index: write the interpretability report for MODEL_A MODEL_B")
    p.add_argument("--out", type=path, help="with --db: report folder (default compare-A-vs-B); a new one, or one "
                                           "compare wrote before")
    p.add_argument("--force", action="store_true", help="write into an --out that holds other files too (they "
                                                        "are never replaced)")
    p.add_argument("--threshold", type=float, default=RULE_SHARE,
                   help=f"with --db: the rule's share of top examples (default {RULE_SHARE:g}, the paper's 80%%)")
    p.set_defaults(func=cmd_compare)

    e = sub.add_parser("experiment", help="the paper's experiment: GELU vs SoLU across sizes and seeds, as Ray "
                                          "tasks, into one index, ending in the figure and a report")
    e.add_argument("--out", required=True, type=path, help="a new folder (or this experiment's, to resume it)")
    e.add_argument("--acts", nargs="+", default=None, metavar="ACT", help="activations (default gelu solu_ln)")
    e.add_argument("--layers", nargs="+", type=count(64, "layers of an experiment's models"), default=None, metavar="N", help="sizes: layer counts (default 1 2)")
    e.add_argument("--seeds", type=count(100, "training runs per cell"), default=None, help="training seeds per cell, 0..N-1 (default 3)")
    e.add_argument("--tokens", type=count(*MOST_TOKENS), default=None, help="training tokens per model (default 2,000,000)")
    e.add_argument("--index-tokens", type=count(*MOST_TOKENS), default=None, help="tokens indexed per model (default 1,000,000)")
    e.add_argument("--dataset", default=None, help="builtin, a local file or folder, or hf:NAME (default builtin)")
    for flag, what in (("--d-model", "residual width"), ("--d-mlp", "MLP neurons per layer"), ("--heads", "heads"),
                       ("--ctx", "context"), ("--vocab", "tokenizer vocabulary")):
        e.add_argument(flag, type=int, default=None, help=f"{what} of every cell (default: the demo's)")
    e.add_argument("--threads", type=int, default=None, help="torch threads per task (default 1)")
    e.add_argument("--workers", type=int, default=None,
                   help="tasks at once (default: the cores / threads; 1 runs every cell in this process)")
    e.add_argument("--address", default=None, help="an existing Ray cluster to send the tasks to (no authentication "
                                                   "by default: use a cluster you trust)")
    e.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda asks each task for a GPU")
    e.add_argument("--quick", action="store_true", help="tiny models and token counts: a few minutes, for tests")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_experiment)

    m = sub.add_parser("match", help="each neuron's best matches in another model indexed on the same tokens")
    m.add_argument("--db", required=True, type=path)
    m.add_argument("models", nargs=2, metavar="MODEL", help="two model ids (same tokenizer and documents)")
    m.add_argument("--top", type=count(1000, "matches kept per neuron"), default=3, help="matches kept per neuron (default 3)")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.set_defaults(func=cmd_match)


def experiment_grid(args):
    """The grid the flags ask for: --quick's or the defaults, with every flag given on top."""
    from index.measure.experiment import QUICK, Grid

    given = {"acts": tuple(args.acts) if args.acts else None, "layers": tuple(args.layers) if args.layers else None,
             "seeds": tuple(range(args.seeds)) if args.seeds is not None else None, "tokens": args.tokens,
             "index_tokens": args.index_tokens, "dataset": args.dataset, "d_model": args.d_model,
             "d_mlp": args.d_mlp, "heads": args.heads, "ctx": args.ctx, "vocab": args.vocab,
             "threads": args.threads}
    try:
        return Grid(**{**(QUICK if args.quick else {}), **{k: v for k, v in given.items() if v is not None}})
    except ValueError as err:
        raise UserError(str(err)) from None


def cmd_experiment(args) -> int:
    from index.measure.experiment import run_experiment
    from index.measure.experiment_report import write_report
    from solu.flags import MAX_CLUSTER_WORKERS, check_count, cores
    from solu.outputs import OutputFolder

    grid = experiment_grid(args)
    check_count("--threads", grid.threads, cores(), "the cores of this machine")
    if args.workers is not None:
        if args.address:
            check_count("--workers", args.workers, MAX_CLUSTER_WORKERS, "tasks sent to a cluster at once")
        else:
            check_count("--workers", args.workers, cores() // grid.threads, "the cores of this machine / --threads")
    folder = OutputFolder(args.out / "report", "--out", "experiment")
    db = run_experiment(args.out, grid, workers=args.workers, address=args.address, device=args.device,
                        progress=not args.no_progress)
    report = write_report(db, folder)
    print(report.read_text(encoding="utf-8").split("## Interpretable share")[0])
    print(f"{len(grid.cells())} cells in {db}; report and figures in {report.parent} "
          f"(the app's Models page shows them: solu app --db {db})")
    return 0


def cmd_match(args) -> int:
    from index.measure.matches import match

    a, b = args.models
    rows = match(args.db, a, b, args.top, progress=not args.no_progress)
    best = rows[rows["rank"] == 1]
    summary = best.groupby("model_id", sort=False).r.agg(neurons="size", median_best_r="median",
                                                          r_at_least_0_9=lambda r: int((r >= 0.9).sum()))
    print(_table(summary.reset_index().assign(median_best_r=lambda d: d.median_best_r.map(lambda v: f"{v:.3f}"))))
    for r in best[best.model_id == a].nlargest(5, "r").itertuples():
        print(f"{a} L{r.layer}/N{r.neuron} <-> {b} L{r.other_layer}/N{r.other_neuron}, r = {r.r:.2f}")
    print(f"{len(rows):,} matches in neuron_matches (both directions, best {args.top} each)")
    return 0


def _table(df) -> str:
    from solu.text_table import format_table

    return format_table(df.astype(object).where(df.notna(), "-").to_dict("records")) if len(df) else "(none)"


def cmd_autolabel(args) -> int:
    from index.measure import verdict
    from index.measure.autolabel import autolabel, resolve_concepts
    from solu.flags import check_count, cores
    from index.measure.concepts import CONCEPTS

    if args.list:
        for c in CONCEPTS.values():
            print(f"{c.name:14s} {c.description}")
        return 0
    if args.db is None:
        raise UserError("--db is required")
    if args.workers is not None:
        check_count("--workers", args.workers, cores(), "the cores of this machine")
    concepts = resolve_concepts(args.concepts, args.regex)
    summary = autolabel(args.db, args.models, concepts, args.threshold, progress=not args.no_progress,
                        workers=args.workers)
    print(_table(autolabel_table(summary)))
    print(_table(explained_table(args.db, sorted(summary.model_id.unique()))))
    missing = summary[summary.in_sample == 0]
    if len(missing):
        pairs = ", ".join(f"{r.model_id}:{r.concept}" for r in missing.itertuples())
        print(f"no occurrence in the index's activation sample, so no sample share or AUROC (the top share "
              f"stands): {pairs}", file=sys.stderr)
    print(f"scores in concept_scores; a neuron whose best concept holds >= {args.threshold:.0%} of its top "
          f"examples carries an automatic label (source 'auto') to accept or reject in the app; explanations "
          f"and their held-out scores in explanations, at every site (interpretable: the explanation holds at "
          f">= {verdict.TOP_SHARE:.0%} of the top examples and scores >= {verdict.SCORE:g} held out)")
    return 0


def explained_table(db, models: list[str]):
    """Per model: neurons the verdict calls interpretable (primary site), with a 95% Wilson
    interval, the mean and median held-out score and the most common kinds of explanation."""
    from index.measure import verdict
    from index.measure.compare import explanations, primary, verdict_table
    from index.measure.curves import curve_mean
    from index.store.connection import open_read

    with open_read(db) as con:
        expl = explanations(con, models)
    table = verdict_table(expl, models, False, verdict.SCORE)
    expl = primary(expl)
    means = expl.groupby("model_id").score.agg(curve_mean)
    kinds = (expl[verdict.interpretable(expl.top_share, expl.score)].groupby("model_id").kind.value_counts()
             .groupby(level=0).apply(lambda s: ", ".join(f"{k[1]} {v}" for k, v in s.items())))
    return table.assign(
        interpretable=[f"{f:.1%} [{lo:.1%}, {hi:.1%}]" for f, lo, hi in zip(table.frac_passing, table.ci_low,
                                                                          table.ci_high)],
        mean_score=table.model_id.map(means).map(lambda v: f"{v:.3f}" if v == v else "-"),
        median_score=table.median_score.map(lambda v: f"{v:.3f}" if v == v else "-"),
        kinds=table.model_id.map(kinds).fillna("-"))[["model_id", "neurons", "passing", "interpretable",
                                                      "mean_score", "median_score", "kinds"]]


def autolabel_table(summary):
    """The autolabel summary as printed: shares with two decimals, the interval in brackets."""
    def fmt(v, digits=2):
        return f"{v:.{digits}f}" if v == v else "-"

    return summary.assign(
        neurons_passing=summary.neurons_passing.astype(int),
        best_top_share=[f"{fmt(s)} [{fmt(lo)}, {fmt(hi)}]" for s, lo, hi in
                        zip(summary.best_top_share, summary.top_low, summary.top_high)],
        best_sample_share=summary.best_sample_share.map(fmt), base_rate=summary.base_rate.map(lambda v: fmt(v, 4)),
        best_auroc=summary.best_auroc.map(lambda v: fmt(v, 3))).drop(columns=["top_low", "top_high"])


def cmd_study_create(args) -> int:
    from index.store.connection import open_read
    from index.measure.study import create_study, study_items

    create_study(args.db, args.name, args.models, args.per_model, args.seed, args.snippets)
    with open_read(args.db) as con:
        n = len(study_items(con, args.name))
    print(f"study {args.name!r}: {n} neurons from {len(set(args.models))} models; rate them on the app's Study page")
    return 0


def cmd_study_sheet(args) -> int:
    from index.measure.study import sheet_text
    from index.store.connection import open_read
    from solu.outputs import check_out_file, write_text

    if not args.rater.strip():
        raise UserError("--rater needs a name")
    check_out_file(args.out, "--out", force=args.force, inputs=(args.db,))
    with open_read(args.db) as con:
        text = sheet_text(con, args.name, args.rater.strip())
    write_text(args.out, text, "--out")
    print(f"sheet for {args.rater.strip()!r} written to {args.out}; answer with "
          f"`solu study answer --db {args.db} {args.name!r} --rater {args.rater.strip()!r} --file ANSWERS.csv`")
    return 0


def cmd_study_answer(args) -> int:
    import csv

    from index.measure.study import import_answers

    try:
        with open(args.file, newline="", encoding="utf-8-sig") as f:  # a spreadsheet's byte-order mark too
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read {args.file}: {e}") from None
    n = import_answers(args.db, args.name, args.rater, rows)
    print(f"{n} answers of {args.rater.strip()!r} recorded in study {args.name!r}")
    return 0


def cmd_study_summary(args) -> int:
    from index.store.connection import open_read
    from index.measure.study import calibrated, calibration, summary, summary_models
    from index.measure.verdict import TOP_SHARE

    with open_read(args.db) as con:
        df = summary(con, args.name)
    for col in ("frac_interpretable", "ci_low", "ci_high"):
        df[col] = df[col].map(lambda v: f"{v:.3f}" if v == v else "-")
    print(_table(df))
    with open_read(args.db) as con:
        models = sorted(set(summary_models(con, args.name)))
        cal = calibration(con, models, args.name)
    if cal.empty:
        print("no answer meets an explained neuron yet: run `solu autolabel` for the agreement with the raters")
        return 0
    row = cal.iloc[0]
    print(f"agreement with the automated measures over {row['items']} answers ({row.yes} yes) on "
          f"{row.neurons} neurons: held-out score AUROC {row.auroc:.3f}; default verdict (top share >= "
          f"{TOP_SHARE:.0%}, score >= {row.default_cut:g}) kappa {row.kappa_default:.3f}, accepts "
          f"{row.accepts_yes:.0%} of yes and {row.accepts_no:.0%} of no; best score cut {row.best_cut:g} "
          f"[{row.best_cut_low:g}, {row.best_cut_high:g}], kappa {row.kappa_best:.3f}"
          + ("" if calibrated(cal) else " (too few answers for compare to recalibrate)"))
    return 0


def checkpoint_table(specs: list) -> list[dict]:
    """One row per MODEL spec: a checkpoint's config.json; any other model is loaded
    (solu.sources.load_model) to read its shape."""
    from solu.checkpoint import read_meta
    from solu.sources import load_model, resolve

    rows = []
    for spec in specs:
        ref = resolve(str(spec))
        if ref.kind != "checkpoint":
            rows.append(_loaded_row(load_model(ref)))
            continue
        meta = read_meta(ref.path)
        m = meta["model"]
        rows.append({
            "checkpoint": str(spec), "act_fn": m["act_fn"],
            "shape": f"{m['n_layers']}L d{m['d_model']} mlp{m['d_mlp']} h{m['n_heads']} ctx{m['n_ctx']} v{m['d_vocab']}",
            "params": f"{meta.get('n_params', 0):,}", "tokens": f"{meta.get('tokens_seen', 0):,}",
            "eval_loss": f"{meta['eval_loss']:.4f}" if meta.get("eval_loss") is not None else "-",
            "tokens/s": f"{meta['tokens_per_s']:,.0f}" if meta.get("tokens_per_s") else "-",
            "train_s": f"{meta.get('train_seconds', 0):,.0f}",
        })
    return rows


def _loaded_row(loaded) -> dict:
    m = loaded.model_cfg
    return {"checkpoint": f"{loaded.source}@{loaded.revision[:10]}" if loaded.revision else loaded.source,
            "act_fn": m.act_fn,
            "shape": f"{m.n_layers}L d{m.d_model} mlp{m.d_mlp} h{m.n_heads} ctx{m.n_ctx} v{m.d_vocab}",
            "params": f"{loaded.n_params:,}",
            "tokens": f"{loaded.tokens_trained:,}" if loaded.tokens_trained else "-",
            "eval_loss": "-", "tokens/s": "-", "train_s": "-"}


def cmd_compare(args) -> int:
    from solu.text_table import format_table

    if args.db is not None:
        return cmd_compare_report(args)
    if args.out is not None:
        raise UserError("--out needs --db (the report compares two indexed models)")
    print(format_table(checkpoint_table(args.checkpoints)))
    return 0


def cmd_compare_report(args) -> int:
    """`solu compare --db FILE A B [--out DIR]`: the markdown + PNG report; A and B are
    model ids or comma-separated groups of them (training seeds)."""
    from index.measure.report import write_report
    from solu.outputs import OutputFolder

    if len(args.checkpoints) != 2:
        raise UserError("with --db, compare takes two model ids or two comma-separated groups of them: "
                        "solu compare --db FILE MODEL_A MODEL_B (or A1,A2,A3 B1,B2,B3)")
    groups = [[m for m in str(spec).split(",") if m] for spec in args.checkpoints]
    if not all(groups):
        raise UserError(f"an empty model group: {' '.join(map(str, args.checkpoints))!r}")
    names = ["+".join(g) for g in groups]
    out = args.out or Path(f"compare-{names[0]}-vs-{names[1]}".replace("/", "_"))  # hub ids hold a slash
    folder = OutputFolder(out, "--out", "compare", force=args.force)
    report = write_report(args.db, groups, folder, args.threshold)
    print(report.read_text(encoding="utf-8"))
    print(f"report written to {report} (plots beside it)")
    return 0
