"""``helical-runner annotate train|predict|report``: arguments and the command itself.

Kept out of ``cli.py`` so the annotation job registers with one call; the
work lives in :mod:`helical_runner.annotate` and :mod:`helical_runner.annotate_report`.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import RunnerError


def add_parser(sub, *, run_label) -> None:
    """Register ``annotate`` and its modes on the CLI's subparsers."""
    p = sub.add_parser(
        "annotate", help="cell-type annotation: train on a labelled reference, label queries"
    )
    modes = p.add_subparsers(dest="annotate_command", required=True, parser_class=type(p))

    def common(m) -> None:
        m.add_argument(
            "--pushgateway", help="Prometheus Pushgateway URL (env HELICAL_RUNNER_PUSHGATEWAY)"
        )
        m.add_argument(
            "--run-label", type=run_label, action="append", default=[], metavar="KEY=VALUE",
            help="label for metrics and the manifest (dag_id, task_id, run_id); repeatable",
        )  # fmt: skip

    m = modes.add_parser("train", help="fit a classifier on a reference; held-out scores")
    m.add_argument(
        "--reference",
        required=True,
        help="the labelled reference .h5ad of counts (embedded first for a model), or its "
        "'embed' output (obs carries the labels); path or s3:// URI",
    )
    m.add_argument("--label-key", required=True, help="obs column with the cell labels")
    m.add_argument("--model", required=True, help="geneformer, scgpt, uce (embeddings) or pca")
    m.add_argument("--output", required=True, help="classifier .npz (manifest written beside it)")
    m.add_argument(
        "--model-store",
        help="model store, to embed a reference given as counts (env HELICAL_RUNNER_MODEL_STORE)",
    )
    m.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    m.add_argument("--epochs", type=int, default=5, help="passes over the training cells")
    m.add_argument("--held-out", type=float, default=0.2, help="stratified share held out")
    m.add_argument("--seed", type=int, default=0)
    common(m)

    m = modes.add_parser("predict", help="label a query's cells with a trained classifier")
    m.add_argument("--classifier", required=True, help="classifier .npz written by 'train'")
    m.add_argument(
        "--input",
        required=True,
        help="the query's 'embed' output for the classifier's model, or its counts for pca",
    )
    m.add_argument("--output", required=True, help="labelled .h5ad (manifest written beside it)")
    m.add_argument(
        "--min-confidence",
        type=float,
        default=0.5,
        help="cells whose top class probability is lower are labelled 'unknown'",
    )
    m.add_argument("--cells-per-chunk", type=int, help="cells labelled and checkpointed at a time")
    common(m)

    m = modes.add_parser("report", help="HTML report comparing classifiers (and the pca baseline)")
    m.add_argument(
        "--classifiers", required=True, nargs="+", help="classifier .npz files, or folders of them"
    )
    m.add_argument("--predictions", nargs="*", default=[], help="predict outputs to summarise")
    m.add_argument("--output", required=True, help="report folder: local path or s3:// prefix")


def run(args) -> int:
    from . import annotate, metrics

    mode = args.annotate_command
    if mode == "report":
        from .annotate_report import write_report

        print(json.dumps({"report": write_report(args.classifiers, args.predictions, args.output)}))
        return 0
    model = getattr(args, "model", None) or "unknown"
    try:
        if mode == "train":
            manifest = annotate.train(
                annotate.TrainRequest(
                    reference=args.reference,
                    label_key=args.label_key,
                    model=args.model,
                    output=args.output,
                    epochs=args.epochs,
                    seed=args.seed,
                    held_out_fraction=args.held_out,
                    model_store=args.model_store,
                    device=args.device,
                    pushgateway=args.pushgateway,
                    run_labels=dict(args.run_label),
                )
            )
            summary = {
                "classifier": manifest["classifier"]["uri"],
                "model": manifest["model"],
                "macro_f1": manifest["scores"]["macro_f1"],
            }
        else:
            manifest = annotate.predict(
                annotate.PredictRequest(
                    classifier=args.classifier,
                    input=args.input,
                    output=args.output,
                    min_confidence=args.min_confidence,
                    cells_per_chunk=args.cells_per_chunk,
                    pushgateway=args.pushgateway,
                    run_labels=dict(args.run_label),
                )
            )
            summary = {
                "output": manifest["output"],
                "model": manifest["model"],
                "unknown_cells": manifest["unknown_cells"],
            }
    except Exception as exc:
        reason = exc.reason if isinstance(exc, RunnerError) else "internal"
        dataset = Path(getattr(args, "reference", None) or args.input).name
        labels = metrics.labels_for(model, "cpu", "", dataset, dict(args.run_label))
        metrics.push_failure(args.pushgateway, labels, reason)
        raise
    # one JSON line: batch systems keep the last line of stdout
    print(json.dumps(summary))
    return 0
