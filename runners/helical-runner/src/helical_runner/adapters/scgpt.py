"""scGPT through helical's scGPT/scGPTConfig, with a checkpoint/architecture check.

helical's scGPT loader silently skips checkpoint tensors whose names or
shapes do not match the model, so a wrong checkpoint would run with random
weights and no error. The adapter refuses that.

Length-aware batching. helical's ``get_embeddings`` collates consecutive
cells (binning, sampling down to 1,200 genes) and pads each batch to its
longest cell. In its default ``cell`` mode it then averages the encoder
output over *every* position after ``<cls>``, padding included, so a cell's
embedding depends on how long its batch neighbours are. The adapter runs
the same collator and the same ``_encode`` on cells sorted by length in
token-bounded batches (:func:`~.base.run_length_batched`), each padded to its
longest cell (plus one padding column when a cell was padded in helical's
batch; no mask at all when nothing is padded). scGPT has no positional encoding, so
every padding position of a cell yields the same vector; from the sum over a
cell's genes and that vector the adapter recomputes exactly the mean helical
would have produced with its own batches of ``batch_size`` consecutive
cells, then applies helical's normalisation. Same output, less padding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import BadInput
from .base import Adapter, run_length_batched


class ScGPTAdapter(Adapter):
    name = "scgpt"
    gene_id = "symbol"

    def artifact_files(self) -> list[str]:
        return ["scgpt/scGPT_CP/vocab.json", "scgpt/scGPT_CP/best_model.pt"]

    def vocabulary(self, cache: Path) -> set[str]:
        vocab = json.loads((cache / "scgpt/scGPT_CP/vocab.json").read_text())
        return {k for k in vocab if not k.startswith("<")}

    def load(self) -> None:
        import torch
        from helical.models.scgpt import scGPT, scGPTConfig

        config = scGPTConfig(
            batch_size=self.profile.batch_size, device=self.device, **self.overrides
        )
        self.model = scGPT(configurer=config)
        checkpoint = torch.load(config.config["model_path"], map_location="cpu", weights_only=True)
        self._check_checkpoint(
            checkpoint, self.model.model.state_dict(), str(config.config["model_path"])
        )
        self.model.model._encode = self.timed(self.model.model._encode)

    @staticmethod
    def _check_checkpoint(checkpoint: dict, expected: dict, where: str) -> None:
        loaded = {k.replace("Wqkv.", "in_proj_"): v for k, v in checkpoint.items()}
        missing = [k for k in expected if k not in loaded]
        mismatched = [
            k
            for k in expected
            if k in loaded and tuple(loaded[k].shape) != tuple(expected[k].shape)
        ]
        if missing or mismatched:
            example = (missing or mismatched)[0]
            raise BadInput(
                f"scGPT checkpoint does not fit the model: {len(missing)} tensors missing, "
                f"{len(mismatched)} with other shapes (e.g. '{example}')",
                where=where,
            )

    def prepare(self, chunk):
        chunk.var["gene_name"] = chunk.var_names.astype(str)
        return self.model.process_data(chunk, gene_names="gene_name")

    def infer(self, prepared) -> np.ndarray:
        config = self.model.config
        if config["emb_mode"] not in ("cell", "cls") or prepared.batch_ids is not None:
            return self.model.get_embeddings(prepared)
        if len(prepared) == 0:
            return np.empty((0, config["embsize"]), dtype=np.float32)
        tokens = self._tokens_per_cell(prepared)
        helical_padded = self._helical_padded_lengths(tokens)
        collator = self._collator()
        rows = run_length_batched(
            tokens,
            lambda positions: self._embed_batch(
                prepared, positions, tokens, helical_padded, collator
            ),
            max_tokens=self.profile.max_tokens_per_batch,
            max_items=self.profile.batch_size,
        )
        return self.model._normalize_embeddings(rows)

    def _tokens_per_cell(self, prepared) -> np.ndarray:
        """Tokens helical feeds per cell: <cls> + non-zero genes, sampled down to MAX_LENGTH."""
        nonzero = np.asarray((prepared.count_matrix != 0).sum(axis=1)).ravel()
        return np.minimum(nonzero + 1, self.model.config["MAX_LENGTH"])

    def _helical_padded_lengths(self, tokens: np.ndarray) -> np.ndarray:
        """Each cell's padded length in helical's batches of batch_size consecutive cells."""
        size = self.model.config["batch_size"]
        starts = np.arange(0, len(tokens), size)
        return np.repeat(np.maximum.reduceat(tokens, starts), np.diff([*starts, len(tokens)]))

    def _collator(self):
        """helical's collator, configured as its get_embeddings configures it."""
        from helical.models.scgpt.data_collator import DataCollator

        config = self.model.config
        return DataCollator(
            do_padding=True,
            pad_token_id=self.model.vocab[config["pad_token"]],
            pad_value=config["pad_value"],
            do_mlm=False,
            do_binning=True,
            max_length=config["MAX_LENGTH"],
            sampling=True,
            keep_first_n_tokens=1,
        )

    def _embed_batch(self, prepared, positions, tokens, helical_padded, collator) -> np.ndarray:
        """Encode the cells at ``positions``; helical's cell/cls embedding of each (unnormalised)."""
        import torch

        config = self.model.config
        pad_id = self.model.vocab[config["pad_token"]]
        batch = collator([prepared[int(i)] for i in positions])
        genes, values = batch["gene"], batch["expr"]
        n = tokens[positions]
        padded = helical_padded[positions]
        if config["emb_mode"] == "cell" and (padded > n).any():
            # one more padding column, so every cell shows its padding vector
            genes = torch.nn.functional.pad(genes, (0, 1), value=pad_id)
            values = torch.nn.functional.pad(values, (0, 1), value=config["pad_value"])
        device = next(self.model.model.parameters()).device
        genes, values = genes.to(device), values.to(device)
        padding = genes.eq(pad_id)
        with torch.no_grad():
            out = self.model.model._encode(
                genes, values, src_key_padding_mask=padding if padding.any() else None
            ).float()
            if config["emb_mode"] == "cls":
                return out[:, 0, :].cpu().numpy()
            n = torch.as_tensor(n, device=device)
            padded = torch.as_tensor(padded, device=device)
            columns = torch.arange(out.shape[1], device=device)
            genes_only = (columns >= 1) & (columns < n[:, None])
            gene_sum = (out * genes_only[..., None]).sum(dim=1)
            padding_vector = out[:, -1, :]
            mean = (gene_sum + (padded - n)[:, None] * padding_vector) / (padded - 1)[:, None]
            return mean.cpu().numpy()
