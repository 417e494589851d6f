"""Geneformer through helical's Geneformer/GeneformerConfig, without the masked-LM head.

helical loads ``BertForMaskedLM`` and computes the vocabulary-sized MLM
logits for every token of every cell, then uses only the hidden states.
Swapping in the bare encoder gives identical cell embeddings, with far less
memory.

helical's ``get_embeddings`` pads each batch of consecutive cells to its
longest and lets transformers expand a batch x 1 x L x L mask. For cell
embeddings the adapter runs its own loop over the same model, tokenized
dataset and pooling function: cells longest first in token-bounded batches
(:func:`~.base.run_length_batched`), padded per batch, a batch x 1 x 1 x L
additive mask (none when the batch has no padding), rows back in input
order. The mean over non-padding tokens makes a cell's embedding independent
of its batch, so the result equals helical's (benchmarks/bench_vs_helical.py,
tests/test_length_batching.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .base import Adapter, run_length_batched

_VERSIONS = {
    "gf-12L-40M-i2048": "v1",
    "gf-6L-10M-i2048": "v1",
    "gf-12L-38M-i4096": "v2",
    "gf-12L-38M-i4096-CLcancer": "v2",
    "gf-20L-151M-i4096": "v2",
    "gf-12L-104M-i4096": "v3",
    "gf-12L-104M-i4096-CLcancer": "v3",
    "gf-18L-316M-i4096": "v3",
}


def _encoder_only(mlm_model, forward_wrapper):
    """A module exposing ``.bert`` and helical's call signature, minus the MLM head."""
    import torch

    class EncoderOnly(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert
            self._forward = forward_wrapper(self._encode)

        def _encode(self, input_ids, attention_mask=None, output_attentions=False):
            return self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                output_hidden_states=True,
                output_attentions=output_attentions,
            )

        def forward(self, input_ids, attention_mask=None, output_attentions=False):
            return self._forward(
                input_ids, attention_mask=attention_mask, output_attentions=output_attentions
            )

    return EncoderOnly(mlm_model.bert)


class GeneformerAdapter(Adapter):
    name = "geneformer"
    gene_id = "ensembl"

    @property
    def version(self) -> str:
        return _VERSIONS.get(self.profile.helical_model_name, "v1")

    def artifact_files(self) -> list[str]:
        model_name = self.profile.helical_model_name
        base = f"geneformer/{self.version}"
        weights = "pytorch_model.bin" if self.version == "v1" else "model.safetensors"
        return [
            f"{base}/gene_median_dictionary.json",
            f"{base}/token_dictionary.json",
            f"{base}/ensembl_mapping_dict.json",
            f"{base}/{model_name}/config.json",
            f"{base}/{model_name}/training_args.bin",
            f"{base}/{model_name}/{weights}",
        ]

    def vocabulary(self, cache: Path) -> set[str]:
        tokens = json.loads(
            (cache / f"geneformer/{self.version}/token_dictionary.json").read_text()
        )
        return {k for k in tokens if not k.startswith("<")}

    def load(self) -> None:
        from helical.models.geneformer import Geneformer, GeneformerConfig

        config = GeneformerConfig(
            model_name=self.profile.helical_model_name,
            batch_size=self.profile.batch_size,
            device=self.device,
            emb_layer=-1,
            emb_mode="cell",
            **self.overrides,
        )
        self.model = Geneformer(configurer=config)
        self.model.model = _encoder_only(self.model.model, self.timed).to(self.device).eval()

    def prepare(self, chunk):
        chunk.var["ensembl_id"] = chunk.var_names.astype(str)
        return self.model.process_data(chunk, gene_names="ensembl_id")

    def infer(self, prepared) -> np.ndarray:
        if self.model.emb_mode != "cell" or len(prepared) == 0:
            return self.model.get_embeddings(prepared)
        return run_length_batched(
            prepared["length"],
            lambda positions: self._embed_batch(prepared, positions),
            max_tokens=self.profile.max_tokens_per_batch,
            max_items=self.profile.batch_size,
        )

    def _embed_batch(self, prepared, positions: np.ndarray) -> np.ndarray:
        """helical's forward and cell pooling (get_embs) for the cells at ``positions``."""
        import torch
        from helical.models.geneformer.geneformer_utils import (
            _compute_embeddings_depending_on_mode,
            pad_tensor_list,
        )

        helical = self.model
        batch = prepared.select(positions.tolist()).with_format("torch")
        lengths = batch["length"]
        longest = int(lengths.max())
        input_ids = pad_tensor_list(batch["input_ids"], longest, helical.pad_token_id, longest).to(
            self.device
        )
        mask = None
        if int(lengths.min()) < longest:
            padding = torch.arange(longest) >= lengths.unsqueeze(1)
            mask = torch.zeros(padding.shape, dtype=torch.float32)
            mask = mask.masked_fill(padding, torch.finfo(torch.float32).min)
            mask = mask[:, None, None, :].to(self.device)
        with torch.no_grad():
            outputs = helical.model(input_ids=input_ids, attention_mask=mask)
            hidden = outputs.hidden_states[helical.layer_to_quant].float()
            return _compute_embeddings_depending_on_mode(
                hidden,
                {"input_ids": input_ids, "length": lengths.to(self.device)},
                helical.emb_mode,
                helical.cls_present,
                helical.eos_present,
                helical.tk.token_to_ensembl_dict,
            )
