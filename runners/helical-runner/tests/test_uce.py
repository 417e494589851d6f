"""UCE: the runner's lean loader and length-sorted batches against helical's own path.

The reference is helical's UCE as a user calls it (UCEConfig, UCE, process_data,
get_embeddings), with helical's own loader, on the demo bundle's weights.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from helical_runner import profiles, store
from helical_runner.adapters.base import working_directory
from helical_runner.adapters.uce import UCEAdapter


@pytest.fixture(scope="module")
def uce_overrides(bundle):
    info = store.fetch(str(bundle))
    store.guard_helical_downloads()
    return info.overrides["uce"]


@pytest.fixture(scope="module")
def uneven_cells(bundle) -> ad.AnnData:
    """Cells whose genes lie on 1 to 20 chromosomes: sentences of 35 to ~51 tokens (32 genes sampled)."""
    table = pd.read_csv(bundle / "uce/species_chrom.csv")
    by_chrom = table.groupby("chromosome")["gene_symbol"].apply(list)
    chroms = list(by_chrom.index[:20])
    genes = sorted({g for c in chroms for g in by_chrom[c][:40]})
    col = {g: i for i, g in enumerate(genes)}
    rng = np.random.default_rng(7)
    n_chroms = [1, 20, 3, 12, 1, 20, 6, 2, 17, 9, 1, 14, 20, 4, 8, 2, 19, 5, 11, 1]
    x = np.zeros((len(n_chroms), len(genes)), dtype=np.float32)
    for row, k in enumerate(n_chroms):
        for c in rng.choice(len(chroms), size=k, replace=False):
            picked = [col[g] for g in by_chrom[chroms[c]][:40]]
            x[row, picked] = rng.integers(1, 30, size=len(picked))
    return ad.AnnData(
        sparse.csr_matrix(x),
        obs=pd.DataFrame(index=[f"cell{i}" for i in range(len(x))]),
        var=pd.DataFrame(index=genes),
    )


def _adapter(overrides, batch_size, max_tokens=None):
    profile = profiles.load("uce").with_overrides(
        batch_size=batch_size, max_tokens_per_batch=max_tokens, precision="fp32"
    )
    adapter = UCEAdapter(profile, device="cpu", precision="fp32", overrides=overrides)
    adapter.load()
    return adapter


def _embed(adapter, cells):
    try:
        return adapter.embed(cells.copy())
    finally:
        adapter.close()


@pytest.fixture(scope="module")
def helical_reference(uce_overrides, uneven_cells, tmp_path_factory):
    """helical's UCE as a user calls it, with its own loader: batch size 4, and 1 (nothing padded)."""
    from helical.models.uce import UCE, UCEConfig

    args = {k: v for k, v in uce_overrides.items() if k != "n_layers"}
    config = UCEConfig(model_name="4layer_model", batch_size=4, device="cpu", **args)
    config.config["n_layers"] = uce_overrides["n_layers"]
    with working_directory(tmp_path_factory.mktemp("helical-uce")):
        model = UCE(configurer=config)  # allocates helical's 145,469 x 5,120 table
        dataset = model.process_data(uneven_cells.copy(), name="ref")
        lengths = np.array([dataset[i][3] for i in range(len(dataset))])
        batched = model.get_embeddings(dataset)
        model.config["batch_size"] = 1
        alone = model.get_embeddings(dataset)
    return {"lengths": lengths, "batch4": batched, "alone": alone}


def test_runner_equals_helical_on_uneven_cells_in_input_order(
    uce_overrides, uneven_cells, helical_reference
):
    lengths = helical_reference["lengths"]
    assert lengths.max() - lengths.min() >= 12  # very different sentence lengths (35-51 tokens)
    assert not np.array_equal(np.argsort(lengths, kind="stable"), np.arange(len(lengths)))
    # helical attends its padding: a cell's embedding depends on its batch neighbours
    padded = np.abs(helical_reference["batch4"] - helical_reference["alone"]).max(axis=1)
    assert padded.max() > 1e-3

    # one sorted batch of all 20 cells, and batches of 1-2 cells under a tight token budget
    for max_tokens in (36864, 150):
        ours = _embed(_adapter(uce_overrides, batch_size=4, max_tokens=max_tokens), uneven_cells)
        assert ours.shape == helical_reference["batch4"].shape
        assert np.abs(ours - helical_reference["batch4"]).max() <= 1e-5
    ours = _embed(_adapter(uce_overrides, batch_size=1), uneven_cells)
    assert np.abs(ours - helical_reference["alone"]).max() <= 1e-5
