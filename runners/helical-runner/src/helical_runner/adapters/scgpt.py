"""scGPT through helical's scGPT/scGPTConfig, with a checkpoint/architecture check.

helical's scGPT loader silently skips checkpoint tensors whose names or
shapes do not match the model, so a wrong checkpoint would run with random
weights and no error. The adapter refuses that.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import BadInput
from .base import Adapter


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
        return self.model.get_embeddings(prepared)
