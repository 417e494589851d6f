"""UCE through helical's UCE/UCEConfig.

UCE writes ``<name>_counts.npz`` into the current directory and reads it back
lazily while embedding, so each chunk runs inside a private scratch folder.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from .base import Adapter, working_directory

_HUMAN_PROTEIN_EMBEDDINGS = (
    "uce/protein_embeddings/Homo_sapiens.GRCh38.gene_symbol_to_embedding_ESM2.pt"
)
# Overrides that are UCEConfig arguments; n_layers is derived from the model name
# by helical, so the demo bundle sets it on the config dict afterwards.
_CONFIG_ARGS = {
    "token_dim",
    "d_hid",
    "output_dim",
    "sample_size",
    "pad_length",
    "CHROM_TOKEN_OFFSET",
}


class _LoadOnce:
    """``torch`` as helical's gene-embedding module sees it, with ``load`` remembered per path.

    helical reads the whole protein-embedding table (one tensor per gene) twice
    for every ``process_data`` call, i.e. twice per chunk; unpickling tens of
    thousands of tensors dominates UCE's preprocessing. The table is read-only,
    so one copy per process serves every chunk.
    """

    def __init__(self, torch_module):
        self._torch = torch_module
        self._loaded: dict[tuple, object] = {}

    def load(self, path, *args, **kwargs):
        key = (str(path), tuple(sorted(kwargs.items())))
        if key not in self._loaded:
            self._loaded[key] = self._torch.load(path, *args, **kwargs)
        return self._loaded[key]

    def __getattr__(self, name):
        return getattr(self._torch, name)


class UCEAdapter(Adapter):
    name = "uce"
    gene_id = "symbol"

    def artifact_files(self) -> list[str]:
        model_name = self.profile.helical_model_name
        return [
            "uce/all_tokens.torch",
            f"uce/{model_name}.torch",
            "uce/species_chrom.csv",
            "uce/species_offsets.json",
            _HUMAN_PROTEIN_EMBEDDINGS,
        ]

    def vocabulary(self, cache: Path) -> set[str]:
        import pandas as pd

        # A gene needs a chromosome position as well as a protein embedding;
        # the position table is the cheaper of the two to read.
        table = pd.read_csv(cache / "uce/species_chrom.csv", usecols=["species", "gene_symbol"])
        return set(table.loc[table["species"] == "human", "gene_symbol"].astype(str).str.upper())

    def load(self) -> None:
        from helical.models.uce import UCE, UCEConfig

        args = {k: v for k, v in self.overrides.items() if k in _CONFIG_ARGS}
        config = UCEConfig(
            model_name=self.profile.helical_model_name,
            batch_size=self.profile.batch_size,
            device=self.device,
            **args,
        )
        if "n_layers" in self.overrides:
            config.config["n_layers"] = self.overrides["n_layers"]
        from helical.models.uce import gene_embeddings

        if not isinstance(gene_embeddings.torch, _LoadOnce):
            gene_embeddings.torch = _LoadOnce(gene_embeddings.torch)
        self._scratch = Path(tempfile.mkdtemp(prefix="helical-runner-uce-"))
        with working_directory(self._scratch):
            self.model = UCE(configurer=config)
        self.model.model.forward = self.timed(self.model.model.forward)

    def close(self) -> None:
        scratch = getattr(self, "_scratch", None)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    def prepare(self, chunk):
        chunk.var_names = chunk.var_names.astype(str).str.upper()
        with working_directory(self._scratch):
            return self.model.process_data(chunk, gene_names="index", name="chunk")

    def infer(self, prepared) -> np.ndarray:
        # the prepared dataset reads ./chunk_counts.npz lazily
        with working_directory(self._scratch):
            return self.model.get_embeddings(prepared)
