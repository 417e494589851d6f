"""HTML report of annotation classifiers: held-out macro-F1, per-class precision/recall,
confusion matrices, every model beside the PCA baseline; plus what each query got.

Everything comes from the manifests ``annotate train``/``predict`` wrote, so the
report never re-reads a dataset.
"""

from __future__ import annotations

import html
import json
import tempfile
from pathlib import Path

import numpy as np

from . import storage
from .annotate import BASELINE, KIND
from .embed import MANIFEST_SUFFIX
from .errors import BadInput

PAGE = "annotation.html"


def _manifest(uri: str) -> dict:
    loc = storage.parse(uri).with_suffix(MANIFEST_SUFFIX)
    if not storage.exists(loc):
        raise BadInput("manifest not found beside it", where=uri)
    return storage.read_json(loc)


def confusion_figure(model: str, confusion: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = confusion["labels"]
    counts = np.asarray(confusion["matrix"], dtype=float)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 2.2 + 0.45 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1, size), dpi=110)
    image = ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (held out)")
    ax.set_title(f"{model}: confusion on held-out cells", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of true class")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def f1_figure(scores: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(scores)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(names), 3.2), dpi=110)
    ax.bar(names, [scores[n] for n in names],
           color=["#999999" if n == BASELINE else "#3b78b5" for n in names])  # fmt: skip
    ax.set_ylim(0, 1)
    ax.set_title("held-out macro-F1", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def build(classifiers: list[str], predictions: list[str], out_dir: Path) -> Path:
    """Write figures, ``annotation.json`` and ``annotation.html`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    trained: dict[str, dict] = {}
    for uri in classifiers:
        manifest = _manifest(uri)
        if manifest.get("kind") != KIND:
            raise BadInput("not an annotation classifier", where=uri)
        trained[manifest["model"]] = manifest
    # the baseline last, so every model reads against it
    order = sorted(trained, key=lambda m: (m == BASELINE, m))
    figures = {}
    for model in order:
        figures[model] = f"confusion_{model}.png"
        confusion_figure(model, trained[model]["scores"]["confusion"], out_dir / figures[model])
    f1_figure({m: trained[m]["scores"]["macro_f1"] for m in order}, out_dir / "macro_f1.png")
    labelled = [_manifest(uri) for uri in predictions]
    summary = {
        "models": {
            m: {
                "macro_f1": trained[m]["scores"]["macro_f1"],
                "accuracy": trained[m]["scores"]["accuracy"],
                "held_out_cells": trained[m]["scores"]["held_out_cells"],
                "train_seconds": trained[m]["train_seconds"],
                "per_class": trained[m]["scores"]["per_class"],
                "classifier": trained[m]["classifier"]["uri"],
                "classifier_sha256": trained[m]["classifier"]["sha256"],
                "demo_weights": bool(
                    (trained[m]["reference"].get("embedding_manifest") or {}).get("demo_weights")
                ),
            }
            for m in order
        },
        "reference": {m: trained[m]["reference"]["uri"] for m in order},
        "predictions": [
            {
                "input": p["input"]["uri"],
                "model": p["model"],
                "output": p["output"],
                "label_counts": p["label_counts"],
                "unknown_cells": p["unknown_cells"],
            }
            for p in labelled
        ],
    }
    (out_dir / "annotation.json").write_text(json.dumps(summary, indent=2))
    page = out_dir / PAGE
    page.write_text(_html(summary, figures))
    return page


def expand_classifiers(uris: list[str]) -> list[str]:
    """Classifier files as given, folders/prefixes as the ``.npz`` files directly in them."""
    found: list[str] = []
    for uri in uris:
        if uri.endswith(".npz"):
            found.append(uri)
            continue
        loc = storage.parse(uri)
        found += [loc.child(n).uri for n in storage.list_names(loc) if n.endswith(".npz")]
    if not found:
        raise BadInput(f"no classifier (.npz) in {uris}")
    return list(dict.fromkeys(found))


def write_report(classifiers: list[str], predictions: list[str], output: str) -> str:
    """Build the report into a folder or ``s3://`` prefix; the page is written last."""
    classifiers = expand_classifiers(classifiers)
    out = storage.parse(output)
    if not out.is_s3:
        return str(build(classifiers, predictions, out.path))
    with tempfile.TemporaryDirectory(prefix="helical-annotation-report-") as tmp:
        page = build(classifiers, predictions, Path(tmp))
        for path in sorted(p for p in Path(tmp).iterdir() if p != page):
            storage.put_file(path, out.child(path.name))
        storage.put_file(page, out.child(PAGE))
    return out.child(PAGE).uri


def _html(summary: dict, figures: dict[str, str]) -> str:
    esc = html.escape
    models = summary["models"]
    rows = "".join(
        f"<tr><td>{esc(m)}{' (baseline)' if m == BASELINE else ''}</td><td>{r['macro_f1']:.3f}</td>"
        f"<td>{r['accuracy']:.3f}</td><td>{r['held_out_cells']:,}</td><td>{r['train_seconds']:.1f}</td></tr>"
        for m, r in models.items()
    )
    classes = sorted({c for r in models.values() for c in r["per_class"]})
    head = "".join(f"<th colspan=2>{esc(m)}</th>" for m in models)
    sub = "<th>precision</th><th>recall</th>" * len(models)
    per_class = "".join(
        f"<tr><td>{esc(c)}</td>"
        + "".join(
            f"<td>{r['per_class'][c]['precision']:.3f}</td><td>{r['per_class'][c]['recall']:.3f}</td>"
            if c in r["per_class"]
            else "<td></td><td></td>"
            for r in models.values()
        )
        + "</tr>"
        for c in classes
    )
    figs = "".join(
        f'<figure><img src="{esc(f)}" alt="confusion matrix of {esc(m)}"><figcaption>{esc(m)}</figcaption></figure>'
        for m, f in figures.items()
    )
    queries = "".join(
        f"<tr><td>{esc(p['input'])}</td><td>{esc(p['model'])}</td><td>{p['unknown_cells']:,}</td>"
        f"<td>{esc(', '.join(f'{k}: {v:,}' for k, v in p['label_counts'].items()))}</td></tr>"
        for p in summary["predictions"]
    )
    demo = any(r["demo_weights"] for r in models.values())
    banner = (
        '<p class="demo">Embeddings made with DEMO weights (tiny random models): their scores show '
        "the pipeline works, not what the models can do.</p>"
        if demo
        else ""
    )
    references = "".join(
        f"<li>{esc(m)}: <code>{esc(u)}</code></li>" for m, u in summary["reference"].items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>helical-workflow annotation report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1rem; }} td, th {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
figure {{ display: inline-block; margin: .5rem; }} img {{ max-width: 520px; }}
.demo {{ background: #fff3cd; padding: .5rem 1rem; border-left: 4px solid #e0a800; }}
</style></head><body>
<h1>Cell-type annotation report</h1>
<p>Classifiers trained on a labelled reference; scores on a stratified held-out share of its
cells that no classifier saw in training. Baseline: PCA of log-normalised counts, classified the same way.</p>
<ul>{references}</ul>
{banner}
<h2>Held-out scores</h2>
<table><tr><th>model</th><th>macro-F1</th><th>accuracy</th><th>held-out cells</th><th>train s</th></tr>{rows}</table>
<img src="macro_f1.png" alt="macro-F1 by model">
<h2>Per class</h2>
<table><tr><th rowspan=2>class</th>{head}</tr><tr>{sub}</tr>{per_class}</table>
<h2>Confusion matrices</h2>{figs}
<h2>Queries labelled</h2>
<table><tr><th>query</th><th>model</th><th>unknown</th><th>labels</th></tr>{queries}</table>
</body></html>
"""
