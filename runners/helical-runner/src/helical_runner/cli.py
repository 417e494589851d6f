"""``helical-runner``: the one command every backend runs.

Exit codes (docs/contracts.md): 0 success, 2 bad input or configuration
(never retry), 75 transient failure (retry with backoff), 1 internal error.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from . import __version__, annotate_cli, logs
from .errors import EXIT_BAD_INPUT, EXIT_BUG, EXIT_TRANSIENT, BadInput, RunnerError, Transient

LOG = logging.getLogger("helical_runner")


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are bad-configuration errors with our exit code."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        print(f"helical-runner: error: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _run_label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"run label must be KEY=VALUE, not '{text}'")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="helical-runner", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"helical-runner {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show helical's own log lines")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("embed", help="embed the cells of an .h5ad with a Helical model")
    p.add_argument("--input", required=True, help=".h5ad path or s3:// URI")
    p.add_argument("--model", required=True, help="geneformer, scgpt or uce")
    p.add_argument(
        "--output",
        required=True,
        action="append",
        help="output .h5ad path or s3:// URI (manifest written beside it); repeat it, each "
        "after its --cells, to embed several shards with the model loaded once",
    )
    p.add_argument("--profile", help="resource profile name or YAML path (default: the model's)")
    p.add_argument(
        "--cells",
        action="append",
        help="cell range START:STOP (rows of the input), e.g. 0:50000; one per --output "
        "when several are given",
    )
    p.add_argument("--batch-size", type=int, help="override the profile's batch size")
    p.add_argument(
        "--cells-per-chunk", type=int, help="override cells read/embedded/checkpointed at a time"
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="override the profile's precision",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--model-store", help="model store folder or s3:// prefix (env HELICAL_RUNNER_MODEL_STORE)"
    )
    p.add_argument(
        "--input-sha256",
        help="sha256 the input must have (from validate --json); a changed input is refused",
    )
    p.add_argument(
        "--pushgateway", help="Prometheus Pushgateway URL (env HELICAL_RUNNER_PUSHGATEWAY)"
    )
    p.add_argument(
        "--run-label",
        type=_run_label,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="label for metrics and the manifest (dag_id, task_id, run_id, shard); repeatable",
    )

    p = sub.add_parser("validate", help="check that a dataset is usable before spending GPU time")
    p.add_argument("--input", required=True)
    p.add_argument("--model", help="also check gene identifiers against this model's vocabulary")
    p.add_argument("--model-store", help="model store (needed for --model vocabularies)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")

    p = sub.add_parser("merge", help="concatenate shard outputs, in order, into one output")
    p.add_argument("--output", required=True)
    p.add_argument("shards", nargs="+")

    p = sub.add_parser("report", help="evaluate embeddings against a PCA baseline; HTML report")
    p.add_argument("--dataset", required=True, help="the input .h5ad (for counts and labels)")
    p.add_argument(
        "--embeddings", required=True, nargs="+", help="embedding outputs of this dataset"
    )
    p.add_argument(
        "--output",
        required=True,
        help="report folder: a local path or an s3:// prefix (report.html is written last)",
    )
    p.add_argument("--label-key", default="cell_type")
    p.add_argument(
        "--max-cells", type=int, default=20000, help="evaluate on at most this many cells"
    )

    p = sub.add_parser(
        "ls", help="list the .h5ad files under folders or s3:// prefixes (JSON on stdout)"
    )
    p.add_argument("uris", nargs="+")

    p = sub.add_parser(
        "provenance",
        help="write a run's provenance record, completed from the outputs' manifests",
    )
    p.add_argument("--output", required=True, help="provenance.json: a local path or s3:// URI")
    p.add_argument(
        "--record-z", required=True, help="the record: zlib-compressed JSON, base64url-encoded"
    )

    p = sub.add_parser("models", help="model store: demo-bundle, fetch, mirror, pull, list")
    msub = p.add_subparsers(dest="models_command", required=True, parser_class=_Parser)
    m = msub.add_parser(
        "demo-bundle", help="write tiny random weights in helical's layout (offline demos/tests)"
    )
    m.add_argument("--to", required=True, help="destination folder")
    m = msub.add_parser("fetch", help="copy a store into helical's cache, verifying checksums")
    m.add_argument("--from", dest="source", required=True, help="store folder or s3:// prefix")
    m.add_argument("--model", help="only this model's artifacts")
    m = msub.add_parser(
        "mirror", help="copy a local store or helical cache to s3:// with a sha256 manifest"
    )
    m.add_argument("--from", dest="source", help="source folder (default: helical's cache)")
    m.add_argument("--to", required=True)
    m = msub.add_parser(
        "pull", help="download a model's artifacts from helical's hub (needs network)"
    )
    m.add_argument("model")
    m = msub.add_parser(
        "list", help="list the artifacts each model loads and whether they are cached"
    )

    p = sub.add_parser("demo-data", help="generate a synthetic .h5ad of raw counts")
    p.add_argument("--output", required=True)
    p.add_argument("--cells", type=int, default=2000)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument(
        "--gene-ids", choices=["ensembl", "symbol", "ensembl-versioned"], default="ensembl"
    )
    p.add_argument("--layout", choices=["csr", "csc", "dense"], default="csr")
    p.add_argument("--counts-in", choices=["X", "layers", "raw"], default="X")
    p.add_argument("--label-key", default="cell_type")
    p.add_argument("--seed", type=int, default=0)

    annotate_cli.add_parser(sub, run_label=_run_label)

    p = sub.add_parser(
        "plan", help="quote a run before it starts: shards, tasks, time, device-hours, cost"
    )
    p.add_argument("--input", action="append", required=True, help=".h5ad dataset (repeat)")
    p.add_argument("--model", action="append", required=True, help="model name (repeat)")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--parallel", type=int, default=1, help="embed jobs at a time (default 1)")
    p.add_argument("--prices", help="price table YAML (default: the built-in, dated one)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        "refresh-profiles",
        help="set the profiles' cells_per_second and startup_s from runs' shard manifests",
    )
    p.add_argument("manifests", nargs="+", help="shard manifests or folders of them (a run root)")
    p.add_argument(
        "--profiles-dir", help="where to write the profiles (default: the built-in ones)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the figures, write nothing")

    p = sub.add_parser("profiles", help="show resource profiles")
    p.add_argument("model", nargs="?")
    p.add_argument("--json", action="store_true")
    return parser


# ---------------------------------------------------------------- commands


def _shards(args) -> list:
    """``--cells``/``--output`` pairs, in order (one --output: --cells optional)."""
    from .embed import Shard

    cells = args.cells or []
    if len(args.output) == 1 and len(cells) <= 1:
        return [Shard(output=args.output[0], cells=cells[0] if cells else None)]
    if len(cells) != len(args.output):
        raise BadInput(
            f"{len(args.output)} --output for {len(cells)} --cells: give one --cells "
            "START:STOP before each --output"
        )
    return [Shard(output=o, cells=c) for c, o in zip(cells, args.output, strict=True)]


def cmd_embed(args) -> int:
    from . import metrics
    from .embed import EmbedRequest, embed_shards

    try:
        manifests = embed_shards(
            EmbedRequest(
                input=args.input,
                model=args.model,
                shards=_shards(args),
                profile=args.profile,
                batch_size=args.batch_size,
                cells_per_chunk=args.cells_per_chunk,
                precision=args.precision,
                device=args.device,
                model_store=args.model_store,
                input_sha256=args.input_sha256,
                pushgateway=args.pushgateway,
                run_labels=dict(args.run_label),
            )
        )
    except Exception as exc:
        reason = exc.reason if isinstance(exc, RunnerError) else "internal"
        labels = metrics.labels_for(
            args.model,
            args.device,
            args.precision or "",
            Path(args.input).name,
            dict(args.run_label),
        )
        metrics.push_failure(args.pushgateway, labels, reason)
        raise
    if not logs.json_mode():
        for manifest in manifests:
            print(
                f"wrote {manifest['output']} ({manifest['selection']['cells']:,} cells, "
                f"{manifest['embedding']['key']} dim {manifest['embedding']['dim']})"
            )
    return 0


def cmd_validate(args) -> int:
    from . import store
    from .adapters import adapter_class
    from .dataset import H5AD
    from .profiles import load
    from .storage import LocalInput, sha256_file
    from .validation import validate

    adapter = None
    model_store = args.model_store or os.environ.get(store.STORE_ENV)
    if args.model:
        cls = adapter_class(args.model)
        adapter = cls(load(cls.name), device="cpu", precision="fp32")
        if model_store:
            store.fetch(model_store, files=adapter.artifact_files())
    local = LocalInput(args.input).path()
    with H5AD(local, uri=args.input) as h5:
        report, _, _ = validate(h5, adapter=adapter, cache=store.helical_cache_dir())
    if args.json:
        payload = report.to_json()
        if report.ok:
            # each shard checks the input it reads is the one validated (--input-sha256)
            payload["sha256"] = sha256_file(local)
        # one line: batch systems (DockerOperator's XCom) keep the last line of stdout
        print(json.dumps(payload))
    else:
        print(report.summary())
    if not report.ok:
        raise BadInput(report.problems[0], where=args.input)
    return 0


def cmd_merge(args) -> int:
    from . import storage
    from .merge import merge_outputs

    manifest = merge_outputs([storage.parse(s) for s in args.shards], storage.parse(args.output))
    print(
        f"merged {len(args.shards)} shards into {args.output} ({manifest['selection']['cells']:,} cells)"
    )
    return 0


def cmd_report(args) -> int:
    import tempfile

    from . import storage
    from .report import build_report

    out = storage.parse(args.output)

    def build(out_dir: Path) -> Path:
        return build_report(
            dataset=args.dataset,
            embeddings=args.embeddings,
            out_dir=out_dir,
            label_key=args.label_key,
            max_cells=args.max_cells,
        )

    if not out.is_s3:
        print(f"report written to {build(out.path)}")
        return 0
    # S3: render locally, then upload; report.html goes last so a visible
    # report.html always has its figures and metrics beside it.
    with tempfile.TemporaryDirectory(prefix="helical-report-") as tmp:
        page = build(Path(tmp))
        files = sorted(p for p in Path(tmp).iterdir() if p.is_file() and p != page)
        for path in [*files, page]:
            storage.put_file(path, out.child(path.name))
    print(f"report written to {out.child(page.name).uri}")
    return 0


def cmd_models(args) -> int:
    from . import store
    from .adapters import ADAPTERS, adapter_class
    from .profiles import load

    if args.models_command == "demo-bundle":
        info = store.build_demo_bundle(Path(args.to))
        print(
            f"demo model bundle at {Path(args.to).resolve()} ({len(info.files)} files; "
            "random weights, for tests and offline demos only)"
        )
    elif args.models_command == "fetch":
        files = None
        if args.model:
            cls = adapter_class(args.model)
            files = cls(load(cls.name), device="cpu", precision="fp32").artifact_files()
        info = store.fetch(args.source, files=files)
        print(
            f"fetched {len(files or info.files)} files into {store.helical_cache_dir()} (kind: {info.kind})"
        )
    elif args.models_command == "mirror":
        source = Path(args.source) if args.source else store.helical_cache_dir()
        info = store.mirror(source, args.to)
        print(f"mirrored {len(info.files)} files to {args.to} with {store.STORE_MANIFEST}")
    elif args.models_command == "pull":
        cls = adapter_class(args.model)
        files = cls(load(cls.name), device="cpu", precision="fp32").artifact_files()
        store.pull(files)
        print(f"pulled {len(files)} files for {cls.name} into {store.helical_cache_dir()}")
    elif args.models_command == "list":
        cache = store.helical_cache_dir()
        for name, cls in sorted(ADAPTERS.items()):
            for rel in cls(load(name), device="cpu", precision="fp32").artifact_files():
                print(f"{name:<11} {'cached ' if (cache / rel).is_file() else 'missing'} {rel}")
    return 0


def cmd_demo_data(args) -> int:
    from .demo_data import write_demo_dataset

    path = write_demo_dataset(
        Path(args.output),
        n_cells=args.cells,
        n_genes=args.genes,
        gene_ids=args.gene_ids,
        layout=args.layout,
        counts_in=args.counts_in,
        label_key=args.label_key,
        seed=args.seed,
    )
    print(
        f"wrote {path} ({args.cells:,} cells x {args.genes:,} genes, {args.layout}, counts in {args.counts_in})"
    )
    return 0


def cmd_ls(args) -> int:
    from . import storage

    print(json.dumps({"datasets": {uri: storage.list_h5ad(uri) for uri in args.uris}}))
    return 0


# What provenance keeps from each output's manifest.
def _manifest_summary(manifest: dict) -> dict:
    return {
        "cells": (manifest.get("selection") or {}).get("cells"),
        "model_artifacts": (manifest.get("model") or {}).get("artifacts"),
        "versions": manifest.get("versions"),
        "demo_weights": manifest.get("demo_weights"),
        # what the run measured, beside the estimate (quote.record_measured)
        "timings": manifest.get("timings"),
        "shards": len(manifest.get("shards") or []),
        "started_at": manifest.get("started_at"),
        "finished_at": manifest.get("finished_at"),
    }


def cmd_provenance(args) -> int:
    import base64
    import binascii
    import zlib

    from . import storage
    from .embed import MANIFEST_SUFFIX

    try:
        record = json.loads(zlib.decompress(base64.urlsafe_b64decode(args.record_z)))
    except (binascii.Error, zlib.error, ValueError) as exc:
        raise BadInput(f"--record-z is not zlib-compressed base64 JSON ({exc})") from exc
    if not isinstance(record, dict):
        raise BadInput("--record-z must hold a JSON object")
    # The manifests live beside the outputs (local or S3), where this runner can read them.
    for out in record.get("outputs", []):
        if out.get("status") != "merged":
            continue
        loc = storage.parse(out["output"]).with_suffix(MANIFEST_SUFFIX)
        out.update(_manifest_summary(storage.read_json(loc) if storage.exists(loc) else {}))
    # the quote beside what was measured, so the next quote can be judged (and the
    # profiles refreshed: helical-runner refresh-profiles)
    from .quote import estimate_table, record_estimate, record_measured

    record["estimate"] = record_estimate(record)
    record["measured"] = record_measured(record)
    text = estimate_table(record["estimate"], record["measured"])
    print(text, file=sys.stderr)
    target = storage.parse(args.output)
    storage.write_json(target, record)
    print(json.dumps({"provenance": target.uri, "quote": text}))
    return 0


def cmd_refresh_profiles(args) -> int:
    from . import profiles as profiles_mod
    from .quote import measured_speeds, refresh_profile_text

    found: list[Path] = []
    for given in args.manifests:
        path = Path(given)
        if path.is_dir():
            found += sorted(path.rglob("*.manifest.json"))
        elif path.is_file():
            found.append(path)
        else:
            raise BadInput("no such manifest or folder", where=given)
    manifests = []
    for path in found:
        try:
            manifests.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise BadInput(f"manifest is not JSON: {exc}", where=str(path)) from exc
    speeds = measured_speeds(manifests)
    if not speeds:
        where = ", ".join(args.manifests)
        raise BadInput("no successful shard manifest found (embed a dataset first)", where=where)
    folder = Path(args.profiles_dir) if args.profiles_dir else profiles_mod.PROFILES_DIR
    changes = []
    for (model, device), speed in sorted(speeds.items()):
        source = folder / f"{model}.yaml"
        if not source.is_file():
            source = profiles_mod.PROFILES_DIR / f"{model}.yaml"
        if not source.is_file():
            raise BadInput(f"no profile for model '{model}'", where=str(source))
        text = refresh_profile_text(source.read_text(), device, speed)
        changes.append(
            {"model": model, "device": device, **speed, "profile": str(folder / source.name)}
        )
        if not args.dry_run:
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / source.name
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_text(text)
            try:
                profiles_mod.load(str(tmp))  # still a valid profile, or the old one stays
            except BadInput:
                tmp.unlink()
                raise
            tmp.replace(target)
    print(
        json.dumps({"manifests": len(manifests), "refreshed": changes, "written": not args.dry_run})
    )
    return 0


def cmd_plan(args) -> int:
    from .profiles import load
    from .quote import load_prices, quote, table

    q = quote(
        args.input,
        [load(m) for m in args.model],
        device=args.device,
        prices=load_prices(args.prices),
        parallel=args.parallel,
    )
    print(json.dumps(q) if args.json else table(q))
    return 0


def cmd_profiles(args) -> int:
    from .profiles import available, load

    names = [args.model] if args.model else available()
    data = {n: load(n).to_json() for n in names}
    if args.json:
        print(json.dumps(data if not args.model else data[args.model], indent=2))
    else:
        import yaml

        print(yaml.safe_dump(data, sort_keys=False).rstrip())
    return 0


COMMANDS = {
    "embed": cmd_embed,
    "validate": cmd_validate,
    "merge": cmd_merge,
    "report": cmd_report,
    "ls": cmd_ls,
    "provenance": cmd_provenance,
    "models": cmd_models,
    "demo-data": cmd_demo_data,
    "profiles": cmd_profiles,
    "plan": cmd_plan,
    "refresh-profiles": cmd_refresh_profiles,
    "annotate": annotate_cli.run,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # helical's progress bars would flood batch logs; the runner reports progress itself.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # helical always asks for CUDA autocast; on CPU torch warns once per call.
    warnings.filterwarnings("ignore", message=".*CUDA is not available.*autocast.*")
    logs.configure(verbose=args.verbose)
    try:
        return COMMANDS[args.command](args)
    except RunnerError as exc:
        return _fail(exc)
    except MemoryError:
        return _fail(Transient("out of memory", reason="oom"))
    except OSError as exc:
        return _fail(
            Transient(f"I/O error: {exc.strerror or exc}", where=exc.filename, reason="io")
        )
    except KeyboardInterrupt:
        print("helical-runner: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        LOG.exception("internal error", extra={"command": args.command})
        if logs.json_mode():
            where = "full traceback in the JSON log line 'internal error' above (field 'traceback')"
        elif args.verbose:
            where = "full traceback above"
        else:
            where = "rerun with -v for the full traceback"
        first = f"{type(exc).__name__}: {exc}".split("\n")[0]
        print(f"helical-runner: internal error (a bug): {first} ({where})", file=sys.stderr)
        return EXIT_BUG


def _fail(exc: RunnerError) -> int:
    kind = {EXIT_BAD_INPUT: "error", EXIT_TRANSIENT: "transient error"}.get(exc.exit_code, "error")
    print(f"helical-runner: {kind}: {exc.one_line()}", file=sys.stderr)
    return exc.exit_code


def entry() -> None:
    """The ``helical-runner`` command: :func:`main`, then a fast exit once it succeeded.

    By then every output is written and closed; what is left is the interpreter's
    teardown (a final garbage collection over the ~570k objects torch, helical and
    the model hold: 3.5-4.5 s). Exit handlers run, logs and stdout are flushed, then
    the process ends with ``os._exit``. Failures exit normally.
    """
    code = main()
    if code == 0:
        # what was registered to run at exit (temp folders to remove) still runs
        atexit._run_exitfuncs()
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # closed or broken pipe
                stream.flush()
        os._exit(0)
    sys.exit(code)


if __name__ == "__main__":
    entry()
