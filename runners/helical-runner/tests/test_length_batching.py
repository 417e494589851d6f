"""Length-aware batching: same embeddings as helical's own get_embeddings, rows in input order.

Cells of very different lengths (1 to 2,000 expressed genes, shuffled) are
embedded by the adapters' length-sorted, token-bounded loops and by helical's
``get_embeddings`` on the same processed data and the same model; the two
must agree within 1e-5 (fp32) whatever the token budget.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from helical_runner import profiles, store
from helical_runner.adapters import adapter_class
from helical_runner.adapters.base import length_batches, run_length_batched
from helical_runner.precision import resolve

N_CELLS = 40


def test_batches_cover_every_item_once_longest_first_within_the_token_budget():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 2049, size=500)
    lengths[7] = 5000  # longer than the budget: a batch of its own
    batches = length_batches(lengths, max_tokens=8192, max_items=16)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(500))
    longest = [int(lengths[b].max()) for b in batches]
    assert longest == sorted(longest, reverse=True)
    for b in batches:
        assert len(b) <= 16
        assert len(b) == 1 or len(b) * lengths[b].max() <= 8192
    assert [7] in [b.tolist() for b in batches]


def test_rows_come_back_in_input_order():
    lengths = np.array([3, 90, 7, 90, 1, 40])
    seen = []

    def embed(positions):
        seen.append(positions.tolist())
        return np.stack([lengths[positions], positions], axis=1)

    rows = run_length_batched(lengths, embed, max_tokens=100, max_items=4)
    assert rows[:, 1].tolist() == list(range(6)) and rows[:, 0].tolist() == lengths.tolist()
    assert seen[0] == [1] and len(seen) > 1, "longest first, several batches"


@pytest.fixture(scope="module")
def uneven_cells():
    """Counts with 1..2,000 expressed genes per cell, lengths shuffled."""
    ensembl, symbols = store.demo_gene_ids()
    rng = np.random.default_rng(7)
    expressed = rng.permutation(np.linspace(1, len(ensembl), N_CELLS).astype(int))
    rows = []
    for k in expressed:
        row = np.zeros(len(ensembl), dtype=np.float32)
        genes = rng.choice(len(ensembl), size=k, replace=False)
        row[genes] = rng.negative_binomial(2, 0.3, size=k) + 1
        rows.append(row)
    X = sp.csr_matrix(np.stack(rows))
    obs = pd.DataFrame(index=[f"cell-{i}" for i in range(N_CELLS)])
    return {"ensembl": (X, obs, ensembl), "symbol": (X, obs, symbols)}


@pytest.fixture(scope="module")
def helical_reference(bundle, uneven_cells):
    """Per model: the loaded adapter, its processed cells and helical's get_embeddings of them."""
    made = {}
    for name in ("geneformer", "scgpt"):
        cls = adapter_class(name)
        profile = profiles.load(name).with_overrides(batch_size=8, precision="fp32")
        probe = cls(profile, device="cpu", precision="fp32")
        info = store.fetch(str(bundle), files=probe.artifact_files())
        store.guard_helical_downloads(store.helical_cache_dir())
        adapter = cls(profile, device="cpu", precision="fp32", overrides=info.overrides[name])
        adapter.load()
        X, obs, genes = uneven_cells[adapter.gene_id]
        adata = ad.AnnData(X=X.copy(), obs=obs.copy(), var=pd.DataFrame(index=genes))
        prepared = adapter.prepare(adata)
        theirs = np.asarray(adapter.model.get_embeddings(prepared), dtype=np.float32)
        made[name] = (adapter, prepared, theirs)
    return made


@pytest.mark.parametrize("model", ["geneformer", "scgpt"])
@pytest.mark.parametrize("max_tokens", [2500, 200_000])
def test_length_batched_embeddings_equal_helicals(helical_reference, model, max_tokens):
    adapter, prepared, theirs = helical_reference[model]
    adapter.profile = adapter.profile.with_overrides(max_tokens_per_batch=max_tokens)
    adapter.batch_latencies.clear()

    ours = np.asarray(adapter.infer(prepared), dtype=np.float32)

    assert ours.shape == theirs.shape and ours.shape[0] == N_CELLS
    assert np.isfinite(ours).all()
    assert np.max(np.abs(ours - theirs)) <= 1e-5
    # rows really are per cell (not one vector repeated) and in input order
    assert len({tuple(np.round(r, 4)) for r in ours}) == N_CELLS
    if max_tokens == 2500:
        assert len(adapter.batch_latencies) > N_CELLS // 8, "a small budget splits batches"


def test_auto_precision_uses_fast_units_only():
    assert resolve("auto", "cpu", flags={"avx512f", "avx512_bf16"}).precision == "fp32"
    assert resolve("auto", "cpu", flags={"avx512f"}).precision == "fp32"
    assert resolve("auto", "cpu", flags={"amx_bf16", "amx_tile"}).precision == "bf16"
    assert resolve("auto", "cuda", capability=(8, 0)).precision == "bf16"
    assert resolve("auto", "cuda", capability=(7, 5)).precision == "fp16"
    assert resolve("auto", "cuda", capability=(6, 1)).precision == "fp32"
    assert resolve("fp16", "cpu").precision == "fp32"
    assert resolve("bf16", "cpu").precision == "bf16"
    assert "AMX" in resolve("auto", "cpu", flags=set()).reason
