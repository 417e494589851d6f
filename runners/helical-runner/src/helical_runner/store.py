"""The model store: helical's artifacts kept where the platform controls them.

helical downloads weights and vocabularies at run time from its public
bucket into ``$CACHE_DIR_HELICAL_PREFIX/.cache/helical/models``. Pods in
private subnets cannot reach that bucket, and a failed check may make older
helical releases delete a cached file. So the runner works from a *store*: a
folder or S3 prefix holding the same relative layout plus ``store.json``
(sha256 of every file). ``fetch`` copies a store into helical's cache,
verifying checksums; once a store is configured, :func:`guard_helical_downloads`
stops helical from touching the network or deleting anything.

A *demo* store (``demo-bundle``) holds tiny randomly initialised weights in
the exact layout helical loads, for tests and offline demos. Everything made
with it says so in its manifest and logs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import logs, storage
from .errors import BadInput, Transient

LOG = logging.getLogger(__name__)

STORE_MANIFEST = "store.json"
STORE_ENV = "HELICAL_RUNNER_MODEL_STORE"
GENE_TABLE = "gene_table.csv"
# Ensembl id <-> symbol tables a store may carry (read by helical_runner.genes).
GENE_TABLES = (GENE_TABLE, "hsapiens_pybiomart.csv")

# Real vocabularies for demo bundles: a folder the bootstrap fills from the
# package registries (scripts/bootstrap.sh, runner_data), never committed.
GENE_SOURCES_ENV = "HELICAL_RUNNER_GENE_SOURCES"
SCGPT_WHEEL = "scgpt-0.2.4-py3-none-any.whl"
SCGPT_VOCAB_MEMBER = "scgpt/tokenizer/default_census_vocab.json"
HUMAN_GENES = "human_genes.tsv.gz"
DEMO_GENE_LIST = Path(__file__).with_name("data") / "demo_genes.tsv"
DEMO_GENES = 2000


def helical_cache_dir() -> Path:
    """Where helical looks for its files (mirrors helical.constants.paths)."""
    prefix = os.environ.get("CACHE_DIR_HELICAL_PREFIX")
    base = Path(prefix) if prefix is not None else Path.home()
    return base / ".cache" / "helical" / "models"


def demo_genes() -> pd.DataFrame:
    """The 2,000 real human genes synthetic data is made of (ensembl_id, gene_name, chromosome, start)."""
    return pd.read_csv(DEMO_GENE_LIST, sep="\t", comment="#", dtype=str)


def demo_gene_ids(n: int = DEMO_GENES) -> tuple[list[str], list[str]]:
    """Ensembl ids and symbols of the first ``n`` demo genes, index-aligned."""
    if n > DEMO_GENES:
        raise BadInput(f"demo data has at most {DEMO_GENES:,} genes (asked for {n:,})")
    genes = demo_genes().iloc[:n]
    return genes["ensembl_id"].tolist(), genes["gene_name"].tolist()


@dataclass
class GeneUniverse:
    """The genes a demo bundle's vocabularies cover, and where they came from."""

    ensembl: list[str]  # Geneformer's tokens
    symbols: list[str]  # scGPT's vocabulary and UCE's tokens
    table: pd.DataFrame  # ensembl_id, gene_name, chromosome, start
    source: dict[str, str]

    def positions(self) -> list[tuple[str, int]]:
        """(chromosome, start) of each symbol; genes the annotation does not place go last."""
        placed = (
            self.table.assign(key=self.table["gene_name"].str.upper())
            .drop_duplicates("key")
            .set_index("key")
        )
        found = []
        for i, symbol in enumerate(self.symbols):
            key = symbol.upper()
            if key in placed.index:
                found.append((str(placed.at[key, "chromosome"]), int(placed.at[key, "start"])))
            else:
                found.append(("unplaced", i))
        return found


def gene_universe(sources: Path | None = None) -> GeneUniverse:
    """Real human vocabularies when the gene sources were fetched, else the demo gene list.

    scGPT's whole-human vocabulary is read from the scgpt 0.2.4 wheel (60,694
    symbols); Ensembl ids, symbols and positions come from Bioconductor's
    org.Hs.eg.db human annotation (Debian's r-bioc-org.hs.eg.db), both fetched
    by the bootstrap into ``$HELICAL_RUNNER_GENE_SOURCES``.
    """
    import zipfile

    folder = sources or (
        Path(os.environ[GENE_SOURCES_ENV]) if os.environ.get(GENE_SOURCES_ENV) else None
    )
    if folder and (folder / SCGPT_WHEEL).is_file() and (folder / HUMAN_GENES).is_file():
        with zipfile.ZipFile(folder / SCGPT_WHEEL) as wheel:
            vocab = json.loads(wheel.read(SCGPT_VOCAB_MEMBER))
        symbols = [s for s, _ in sorted(vocab.items(), key=lambda item: item[1])]
        table = pd.read_csv(folder / HUMAN_GENES, sep="\t", dtype=str).dropna()
        ensembl = table["ensembl_id"].drop_duplicates().tolist()
        return GeneUniverse(
            ensembl,
            symbols,
            table,
            {
                "scgpt_vocabulary": f"{SCGPT_WHEEL}:{SCGPT_VOCAB_MEMBER}",
                "gene_annotation": "Bioconductor org.Hs.eg.db 3.16.0 (Debian r-bioc-org.hs.eg.db)",
            },
        )
    if folder:
        LOG.warning(
            "gene sources incomplete; demo vocabularies fall back to the 2,000-gene demo list",
            extra={"gene_sources": str(folder)},
        )
    table = demo_genes()
    return GeneUniverse(
        table["ensembl_id"].tolist(),
        table["gene_name"].tolist(),
        table,
        {"vocabulary": "helical_runner/data/demo_genes.tsv (2,000 genes)"},
    )


@dataclass
class StoreInfo:
    kind: str  # "demo" or "mirror"
    files: dict[str, str]  # relative path -> sha256
    overrides: dict[str, dict] = field(default_factory=dict)  # model -> config overrides
    source: str = ""
    vocabularies: dict[str, str] = field(default_factory=dict)  # where a demo's genes came from

    @property
    def is_demo(self) -> bool:
        return self.kind == "demo"

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "files": self.files,
            "overrides": self.overrides,
            "source": self.source,
            "vocabularies": self.vocabularies,
        }

    @classmethod
    def from_json(cls, data: dict) -> StoreInfo:
        return cls(
            kind=data.get("kind", "mirror"),
            files=dict(data["files"]),
            overrides=data.get("overrides", {}),
            source=data.get("source", ""),
            vocabularies=data.get("vocabularies", {}),
        )


# ---------------------------------------------------------------- demo bundle


def write_geneformer(
    root: Path,
    ensembl: list[str],
    model_name: str,
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    intermediate: int = 64,
) -> None:
    """Random Geneformer v1 weights and vocabularies at helical's paths (sizes as given)."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    vdir = root / "geneformer" / "v1"
    vdir.mkdir(parents=True, exist_ok=True)
    tokens = {"<pad>": 0, "<mask>": 1}
    tokens.update({gene: i + 2 for i, gene in enumerate(ensembl)})
    medians = {gene: float(1.0 + (i % 7) * 0.5) for i, gene in enumerate(ensembl)}
    (vdir / "token_dictionary.json").write_text(json.dumps(tokens))
    (vdir / "gene_median_dictionary.json").write_text(json.dumps(medians))
    (vdir / "ensembl_mapping_dict.json").write_text(json.dumps({g: g for g in ensembl}))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokens),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=2048,
        pad_token_id=0,
    )
    model = BertForMaskedLM(config)
    mdir = vdir / model_name
    mdir.mkdir(parents=True, exist_ok=True)
    # v1 models ship pytorch_model.bin (transformers 5 would write safetensors).
    config.save_pretrained(mdir)
    torch.save(model.state_dict(), mdir / "pytorch_model.bin")
    torch.save({"demo": True}, mdir / "training_args.bin")


def _write_scgpt(root: Path, symbols: list[str], overrides: dict) -> None:
    import torch
    from helical.models.scgpt.model_dir import TransformerModel

    logs.reclaim_root()  # importing helical adds its own root log handler

    sdir = root / "scgpt" / "scGPT_CP"
    sdir.mkdir(parents=True, exist_ok=True)
    vocab = {s: i for i, s in enumerate(symbols)}
    for special in ("<pad>", "<cls>", "<eoc>"):
        vocab[special] = len(vocab)
    (sdir / "vocab.json").write_text(json.dumps(vocab))
    torch.manual_seed(0)
    # Built with helical's own constructor and the same arguments its loader
    # uses, so every key and shape matches (the loader skips mismatches silently).
    model = TransformerModel(
        ntoken=len(vocab),
        d_model=overrides["embsize"],
        nhead=overrides["nheads"],
        d_hid=overrides["d_hid"],
        nlayers=overrides["nlayers"],
        nlayers_cls=3,
        n_cls=1,
        vocab=vocab,
        dropout=0.2,
        pad_token="<pad>",
        pad_value=-2,
        do_mvc=True,
        do_dab=False,
        use_batch_labels=False,
        domain_spec_batchnorm=False,
        explicit_zero_prob=False,
        pre_norm=False,
    )
    torch.save(model.state_dict(), sdir / "best_model.pt")


def _write_uce(root: Path, universe: GeneUniverse, overrides: dict) -> None:
    import torch
    from helical.models.uce.uce_model import TransformerModel

    logs.reclaim_root()  # importing helical adds its own root log handler

    # helical's UCE looks genes up upper-cased (as UCE's own files spell them)
    symbols = [s.upper() for s in universe.symbols]
    udir = root / "uce"
    (udir / "protein_embeddings").mkdir(parents=True, exist_ok=True)
    token_dim = overrides["token_dim"]
    n_special = 4  # pad, chrom-left, chrom-right, cls (UCEConfig's default indices)
    torch.manual_seed(0)
    gene_vectors = torch.randn(len(symbols), token_dim)
    # views of one tensor: torch.save stores the shared storage once
    torch.save(
        {s: gene_vectors[i] for i, s in enumerate(symbols)},
        udir / "protein_embeddings" / "Homo_sapiens.GRCh38.gene_symbol_to_embedding_ESM2.pt",
    )
    (udir / "species_offsets.json").write_text(json.dumps({"human": n_special}))
    positions = universe.positions()
    pd.DataFrame(
        {
            "species": "human",
            "chromosome": [c for c, _ in positions],
            "start": [p for _, p in positions],
            "gene_symbol": symbols,
        }
    ).to_csv(udir / "species_chrom.csv", index=False)
    chromosomes = {c for c, _ in positions}
    # Token table: specials, genes, then one token per chromosome at CHROM_TOKEN_OFFSET.
    all_tokens = torch.randn(n_special + len(symbols) + len(chromosomes), token_dim)
    torch.save(all_tokens, udir / "all_tokens.torch")
    model = TransformerModel(
        token_dim=token_dim,
        d_model=1280,
        nhead=20,
        d_hid=overrides["d_hid"],
        nlayers=overrides["n_layers"],
        dropout=0.05,
        output_dim=overrides["output_dim"],
    )
    state = model.state_dict()
    # helical's loader expects the full 145469 x 5120 token table inside the
    # checkpoint (and then swaps in all_tokens.torch). A zero-stride view keeps
    # that tensor's shape while storing a single row on disk.
    state["pe_embedding.weight"] = torch.zeros(1, 5120).expand(145469, 5120)
    torch.save(state, udir / "4layer_model.torch")


def demo_overrides(n_genes: int) -> dict[str, dict]:
    """Config overrides that make helical's constructors build the tiny demo shapes."""
    return {
        "geneformer": {},
        "scgpt": {"embsize": 32, "nheads": 2, "d_hid": 64, "nlayers": 2},
        "uce": {
            "token_dim": 64,
            "d_hid": 64,
            "n_layers": 1,
            "output_dim": 32,
            # a cell sentence holds sample_size genes plus two tokens per chromosome
            # (up to 26 with real positions): pad_length must leave room for both
            "sample_size": 32,
            "pad_length": 96,
            "CHROM_TOKEN_OFFSET": 4 + n_genes,
        },
    }


def build_demo_bundle(dest: Path, *, sources: Path | None = None) -> StoreInfo:
    """Write a complete demo store at ``dest`` (atomically: built aside, then renamed)."""

    dest = dest.resolve()
    if (dest / STORE_MANIFEST).is_file():
        info = StoreInfo.from_json(json.loads((dest / STORE_MANIFEST).read_text()))
        if info.is_demo:
            return info
        raise BadInput("a non-demo model store already exists there", where=str(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-bundle.", dir=dest.parent))
    try:
        universe = gene_universe(sources)
        overrides = demo_overrides(len(universe.symbols))
        write_geneformer(tmp, universe.ensembl, "gf-6L-10M-i2048")
        _write_scgpt(tmp, universe.symbols, overrides["scgpt"])
        _write_uce(tmp, universe, overrides["uce"])
        universe.table[["ensembl_id", "gene_name"]].to_csv(tmp / GENE_TABLE, index=False)
        info = StoreInfo(
            kind="demo",
            files=checksums(tmp),
            overrides=overrides,
            source="demo-bundle",
            vocabularies=universe.source,
        )
        (tmp / STORE_MANIFEST).write_text(json.dumps(info.to_json(), indent=2, sort_keys=True))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    LOG.info("demo model bundle written", extra={"store": str(dest), "demo": True})
    return info


def checksums(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): storage.sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != STORE_MANIFEST
    }


# ---------------------------------------------------------------- fetch / mirror


def read_store_info(store_uri: str) -> StoreInfo:
    loc = storage.parse(store_uri)
    manifest = loc.child(STORE_MANIFEST)
    if not storage.exists(manifest):
        raise BadInput(f"not a model store: no {STORE_MANIFEST}", where=store_uri)
    try:
        return StoreInfo.from_json(storage.read_json(manifest))
    except (ValueError, KeyError) as exc:
        raise BadInput(f"unreadable {STORE_MANIFEST}: {exc}", where=store_uri) from exc


def fetch(
    store_uri: str, *, files: list[str] | None = None, cache: Path | None = None
) -> StoreInfo:
    """Copy a store's files (or a subset) into helical's cache, verifying sha256.

    Files already cached with the right checksum are left alone; a mismatch
    is replaced from the store, never deleted without a verified replacement.
    """
    cache = cache or helical_cache_dir()
    info = read_store_info(store_uri)
    src = storage.parse(store_uri)
    wanted = (
        sorted(info.files)
        if files is None
        else [*files, *(t for t in GENE_TABLES if t in info.files)]
    )
    for rel in info.files:
        confined_path(cache, rel, store_uri)
    for rel in wanted:
        if rel not in info.files:
            raise BadInput(f"model artifact '{rel}' is not in the store", where=store_uri)
        target = confined_path(cache, rel, store_uri)
        if not src.is_s3 and (src.path / rel).is_symlink():
            raise BadInput(
                f"model artifact '{rel}' is a symbolic link in the store", where=store_uri
            )
        if target.is_file() and _verified(target, info.files[rel]):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f".fetch{os.getpid()}")
        try:
            if src.is_s3:
                storage.get_file(src.child(rel), tmp)
            else:
                shutil.copyfile(src.path / rel, tmp)
            got = storage.sha256_file(tmp)
            if got != info.files[rel]:
                raise BadInput(
                    f"checksum mismatch for model artifact '{rel}' (store is corrupt)",
                    where=store_uri,
                )
            os.replace(tmp, target)
            _remember(target, got)
        except OSError as exc:
            raise Transient(
                f"cannot copy model artifact '{rel}': {exc}", where=store_uri, reason="io"
            ) from exc
        finally:
            if tmp.exists():
                tmp.unlink()
    # Keep the store's own manifest beside the cache so runs can report provenance.
    (cache / STORE_MANIFEST).write_text(json.dumps(info.to_json(), indent=2, sort_keys=True))
    return info


def confined_path(cache: Path, rel: str, where: str) -> Path:
    """``cache / rel``, refusing any entry that could land outside the cache.

    A store is data, not code: an absolute path, a ``..`` component or a
    symbolic link on the way would let a poisoned ``store.json`` write
    anywhere this process can.
    """
    parts = Path(rel).parts
    if not rel or Path(rel).is_absolute() or ".." in parts or "\\" in rel or not parts:
        raise BadInput(
            f"{STORE_MANIFEST} names a path outside the model cache: '{rel}'", where=where
        )
    node = cache
    for part in parts:
        node = node / part
        if node.is_symlink():
            raise BadInput(
                f"{STORE_MANIFEST} path '{rel}' goes through a symbolic link in the model cache",
                where=str(node),
            )
    return node


def _stamp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.sha256")


def _remember(target: Path, digest: str) -> None:
    st = target.stat()
    _stamp_path(target).write_text(f"{digest} {st.st_size} {st.st_mtime_ns}")


def _verified(target: Path, expected: str) -> bool:
    """True when ``target`` has the expected sha256 (a size/mtime stamp avoids rehashing)."""
    st = target.stat()
    stamp = _stamp_path(target)
    if stamp.is_file():
        digest, size, mtime = stamp.read_text().split()
        if int(size) == st.st_size and int(mtime) == st.st_mtime_ns:
            return digest == expected
    digest = storage.sha256_file(target)
    _remember(target, digest)
    return digest == expected


def mirror(source: Path, dest_uri: str) -> StoreInfo:
    """Copy a local store or helical cache folder to ``dest_uri`` with a sha256 manifest."""
    source = source.resolve()
    if not source.is_dir():
        raise BadInput("mirror source is not a folder", where=str(source))
    existing = source / STORE_MANIFEST
    base = StoreInfo.from_json(json.loads(existing.read_text())) if existing.is_file() else None
    files = checksums(source)
    if not files:
        raise BadInput("nothing to mirror: the folder is empty", where=str(source))
    info = StoreInfo(
        kind=base.kind if base else "mirror",
        files=files,
        overrides=base.overrides if base else {},
        source=base.source if base else str(source),
    )
    dest = storage.parse(dest_uri)
    for rel in files:
        storage.put_file(source / rel, dest.child(rel))
    # The manifest goes last: a store is usable only once it is complete.
    storage.write_json(dest.child(STORE_MANIFEST), info.to_json())
    return info


def pull(files: list[str], cache: Path | None = None) -> list[str]:
    """Download files with helical's own downloader (needs helical's hub to be reachable)."""
    from helical.utils.downloader import Downloader

    logs.reclaim_root()  # importing helical adds its own root log handler

    downloader = Downloader()
    done = []
    for name in files:
        try:
            downloader.download_via_name(name)
        except Exception as exc:
            raise Transient(
                f"cannot download '{name}' from helical's hub: {exc}", reason="network"
            ) from exc
        done.append(name)
    return done


# ---------------------------------------------------------------- offline guard


def guard_helical_downloads(cache: Path | None = None) -> None:
    """Make helical's downloader a pure cache lookup: no network, no deletions.

    Called whenever a model store is configured. A missing file becomes a
    clear bad-input error instead of a download attempt.
    """
    from helical.utils import downloader as helical_downloader

    logs.reclaim_root()  # importing helical adds its own root log handler
    cache = cache or helical_cache_dir()

    def cache_only(self, name: str) -> None:
        if not (cache / name).is_file():
            raise BadInput(
                f"model artifact '{name}' is not in the local model cache; "
                "add it to the model store (helical-runner models mirror) and fetch again",
                where=str(cache),
            )

    def no_network(self, *args, **kwargs):
        raise BadInput("helical tried to reach the network while a model store is configured")

    helical_downloader.Downloader.download_via_name = cache_only
    helical_downloader.Downloader.download_via_link = no_network
