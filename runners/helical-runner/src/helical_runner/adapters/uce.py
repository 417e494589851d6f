"""UCE through helical's UCE/UCEConfig, without helical's load-time and padding waste.

helical's UCE is used for what it does well (config, gene filtering, cell
sentence sampling, the TransformerModel and its weights); four things are
replaced or reordered, each giving the same weights and the same embeddings:

- Loading: helical allocates a zero 145,469 x 5,120 token table (~3 GB)
  before every load, copies the checkpoint's table into it, and loads
  ``all_tokens.torch`` whole even when it then keeps the checkpoint's table.
  Here the checkpoint and the token file are memory-mapped and the table that
  helical would keep is used as is (:func:`_lean_loading`).
- Gene symbols: helical unpickles the whole protein-embedding table (one
  tensor per gene) twice per ``process_data`` call only to read its gene
  symbols. Here the symbols alone are read once per file and process
  (:func:`_symbols_only`); helical never reads the tensors' values.
- Batching: cells are sorted by sentence length, batched under the profile's
  tokens-per-batch budget and returned in input order. helical passes
  ``1 - mask`` as a *float* key-padding mask, which torch adds to the
  attention scores: its padding is attended with a +1 bias, so a cell's
  embedding depends on the longest cell among its ``batch_size`` consecutive
  neighbours. To give exactly helical's embeddings, each cell keeps that
  padding (same tokens, same +1), and only the extra padding of the sorted
  batch is masked out (-inf).
- The input stage (token table, normalisation, input projection) depends on
  the token alone, and a chunk's sentences sample the same genes again and
  again: it runs once per distinct token of the chunk.
- Only the CLS token is read out: the last encoder layer and the decoder run
  for that token alone (helical computes every position of both, then keeps
  position 0), without projecting the other positions' keys and values
  (:func:`_cls_through_last_layer`).

UCE writes ``<name>_counts.npz`` into the current directory and reads it back
lazily while embedding, so each chunk runs inside a private scratch folder.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import shutil
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .base import Adapter, run_length_batched, working_directory

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
# helical's token-table rule (uce_utils): a 143,574-row all_tokens.torch gets
# 1,895 chromosome rows appended; a table of 145,469 rows is then replaced by
# the checkpoint's own table, any other size replaces the checkpoint's.
_RELEASED_TOKENS = 143_574
_CHROM_TOKENS = 1_895
_CHECKPOINT_TABLE_ROWS = 145_469


# ---------------------------------------------------------------- loading


def _load_tensors(path, **kwargs):
    """``torch.load(weights_only=True)``, memory-mapped when the file's format allows it."""
    import torch

    mmap = zipfile.is_zipfile(path)  # the legacy (pre-1.6) format cannot be mapped
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap, **kwargs)


def _token_table(token_file, token_dim):
    """Stands in for helical's ``get_ESM2_embeddings``: the raw table, mapped, not copied.

    The chromosome rows helical appends to a 143,574-row table are never used
    (such a table is always replaced by the checkpoint's), so they are not made.
    """
    return _load_tensors(token_file)


def _load_model(model_path, model_config, token_table):
    """Stands in for helical's ``load_model``: same module, same weights, no 3 GB zero table."""
    import torch
    from helical.models.uce.uce_model import TransformerModel

    # the constructor arguments helical's load_model uses
    model = TransformerModel(
        token_dim=model_config["token_dim"],
        d_model=1280,
        nhead=20,
        d_hid=model_config["d_hid"],
        nlayers=model_config["n_layers"],
        dropout=0.05,
        output_dim=model_config["output_dim"],
    )
    state = _load_tensors(model_path)
    if "pe_embedding.weight" not in state:
        raise RuntimeError(f"UCE checkpoint {model_path} has no pe_embedding.weight")
    rows = token_table.shape[0]
    if rows + (_CHROM_TOKENS if rows == _RELEASED_TOKENS else 0) != _CHECKPOINT_TABLE_ROWS:
        state["pe_embedding.weight"] = token_table
    model.pe_embedding = torch.nn.Embedding.from_pretrained(state["pe_embedding.weight"])
    model.load_state_dict(state, strict=True, assign=True)
    return model


@contextlib.contextmanager
def _lean_loading():
    """helical's UCE constructor with :func:`_token_table` and :func:`_load_model` swapped in."""
    from helical.models.uce import model as uce_model

    saved = uce_model.get_ESM2_embeddings, uce_model.load_model
    uce_model.get_ESM2_embeddings, uce_model.load_model = _token_table, _load_model
    try:
        yield
    finally:
        uce_model.get_ESM2_embeddings, uce_model.load_model = saved


# ---------------------------------------------------------------- gene symbols


class _NoTensor:
    """Placeholder for a tensor (or its storage class) in a pickle read for its keys only."""

    def __init__(self, *args, **kwargs):
        pass


class _KeysOnlyUnpickler(pickle.Unpickler):
    """Reads a ``torch.save``d dict of tensors without building the tensors.

    Resolves only the three globals such a pickle refers to; anything else is
    refused (so this is no less strict than torch's weights-only loader).
    """

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _NoTensor
        if module == "torch" and name.endswith("Storage"):
            return _NoTensor
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

    def persistent_load(self, pid):
        return None


_SYMBOLS: dict[tuple, dict] = {}


def _gene_symbols(path) -> dict:
    """``{gene symbol: None}`` in the file's order, read once per file version and process."""
    stat = os.stat(path)
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _SYMBOLS:
        table = None
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
                if len(pickles) == 1:
                    with archive.open(pickles[0]) as f, contextlib.suppress(pickle.UnpicklingError):
                        table = _KeysOnlyUnpickler(f).load()
        if not isinstance(table, dict):
            table = _load_tensors(path)
        _SYMBOLS[key] = dict.fromkeys(table)
    return _SYMBOLS[key]


class _SymbolReader:
    """``torch`` as helical's gene-embedding module sees it: ``load`` gives the symbols only.

    helical's ``load_gene_embeddings_adata`` iterates the loaded table's items
    and uses only the keys (gene symbols) and their order.
    """

    def __init__(self, torch_module):
        self._torch = torch_module

    def load(self, path, *args, **kwargs):
        return _gene_symbols(path)

    def __getattr__(self, name):
        return getattr(self._torch, name)


def _protein_embedding_rows(offset_json_path, species, species_to_all_gene_symbols, adata):
    """helical's ``get_protein_embeddings_idxs`` with a dict lookup instead of ``list.index`` per gene."""
    import torch

    with open(offset_json_path) as f:
        offset = json.load(f)[species]
    first = {}
    for i, symbol in enumerate(species_to_all_gene_symbols[species]):
        first.setdefault(symbol, i)
    return torch.tensor([first[k.lower()] + offset for k in adata.var_names]).long()


@contextlib.contextmanager
def _symbols_only():
    from helical.models.uce import gene_embeddings
    from helical.models.uce import model as uce_model

    saved = gene_embeddings.torch, uce_model.get_protein_embeddings_idxs
    gene_embeddings.torch = _SymbolReader(gene_embeddings.torch)
    uce_model.get_protein_embeddings_idxs = _protein_embedding_rows
    try:
        yield
    finally:
        gene_embeddings.torch, uce_model.get_protein_embeddings_idxs = saved


# ---------------------------------------------------------------- batching


def _helical_padded_lengths(lengths: np.ndarray, batch_size: int) -> np.ndarray:
    """Each cell's padded length in helical's batches of ``batch_size`` consecutive cells."""
    starts = np.arange(0, len(lengths), batch_size)
    return np.repeat(np.maximum.reduceat(lengths, starts), np.diff([*starts, len(lengths)]))


def _attention_bias(lengths: np.ndarray, padded: np.ndarray, width: int):
    """Float key-padding mask: 0 on a cell's tokens, helical's +1 on its helical padding, -inf beyond."""
    import torch

    position = torch.arange(width)[None, :]
    bias = (position >= torch.as_tensor(lengths)[:, None]).float()
    return bias.masked_fill(position >= torch.as_tensor(padded)[:, None], float("-inf"))


def _cls_through_last_layer(layer, src, bias):
    """``layer``'s output at position 0 only (post-norm TransformerEncoderLayer, eval mode).

    One query needs no key or value projection of the other positions. Per
    head h, with q_h the scaled query: q_h . (W_k,h x_j + b_k,h) = (W_k,h^T q_h) . x_j
    + a constant that softmax ignores, and sum_j a_j (W_v,h x_j + b_v,h) =
    W_v,h (sum_j a_j x_j) + b_v,h since the weights a_j sum to 1. That is
    2 x heads x tokens x d_model multiply-adds per cell instead of
    2 x tokens x d_model^2 (64x fewer for UCE's 20 heads of 1,280).
    """
    import torch

    attention = layer.self_attn
    _, cells, width = src.shape
    heads = attention.num_heads
    head_dim = width // heads
    w_q, w_k, w_v = attention.in_proj_weight.view(3, heads, head_dim, width)
    b_q, _, b_v = attention.in_proj_bias.view(3, heads, head_dim)
    query = (torch.einsum("bd,hed->bhe", src[0], w_q) + b_q) / math.sqrt(head_dim)
    keys_query = torch.einsum("bhe,hed->bhd", query, w_k)
    scores = torch.einsum("bhd,lbd->bhl", keys_query, src) + bias[:, None, :]
    mixed = torch.einsum("bhl,lbd->bhd", scores.softmax(dim=-1), src)
    values = torch.einsum("bhd,hed->bhe", mixed, w_v) + b_v
    attended = attention.out_proj(values.reshape(cells, width))[None]
    hidden = layer.norm1(src[:1] + layer.dropout1(attended))
    return layer.norm2(hidden + layer._ff_block(hidden))


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
        self._scratch = Path(tempfile.mkdtemp(prefix="helical-runner-uce-"))
        with working_directory(self._scratch), _lean_loading():
            self.model = UCE(configurer=config)
        encoder = self.model.model.transformer_encoder
        last = encoder.layers[-1]
        if (
            encoder.norm is not None
            or last.norm_first
            or not last.self_attn._qkv_same_embed_dim
            or last.self_attn.in_proj_bias is None
            or last.self_attn.bias_k is not None
            or last.self_attn.add_zero_attn
        ):
            raise RuntimeError("unexpected UCE encoder layout for the CLS-only last layer")
        self._forward = self.timed(self._embed_batch)

    def close(self) -> None:
        scratch = getattr(self, "_scratch", None)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    def prepare(self, chunk):
        chunk.var_names = chunk.var_names.astype(str).str.upper()
        with working_directory(self._scratch), _symbols_only():
            return self.model.process_data(chunk, gene_names="index", name="chunk")

    def infer(self, prepared) -> np.ndarray:
        import torch

        # the prepared dataset reads ./chunk_counts.npz lazily; items are
        # (token ids, mask, index, sentence length, ...) as helical's collator takes them
        with working_directory(self._scratch):
            items = [prepared[i] for i in range(len(prepared))]
        if not items:
            return np.zeros((0, self.model.config["output_dim"]), dtype=np.float32)
        lengths = np.array([item[3] for item in items])
        padded = _helical_padded_lengths(lengths, self.model.config["batch_size"])
        device = next(self.model.model.parameters()).device
        # the input projection depends on the token alone: once per distinct token of the chunk
        # (plus the padding token, which fills sorted batches beyond helical's padding)
        used = [item[0][0, :n] for item, n in zip(items, padded, strict=True)]
        pad = torch.tensor([self.model.config["pad_token_idx"]], dtype=used[0].dtype)
        vocab = torch.unique(torch.cat([*used, pad])).long()
        with torch.no_grad(), self.autocast():
            encoded = self._encode_tokens(vocab.to(device))

        def embed(positions):
            longest = int(padded[positions].max())
            ids = torch.cat([items[i][0][:, :longest] for i in positions]).long()
            rows = torch.searchsorted(vocab, ids)
            mask = _attention_bias(lengths[positions], padded[positions], longest)
            with torch.no_grad():
                return self._forward(encoded, rows.to(device), mask.to(device)).cpu().numpy()

        return run_length_batched(
            padded,
            embed,
            max_tokens=self.profile.max_tokens_per_batch,
            max_items=self.profile.batch_size,
        )

    def _encode_tokens(self, ids, rows_at_once: int = 8192):
        """helical's per-token input stage (scaled by sqrt(d_model)) for each of ``ids``."""
        import torch

        model = self.model.model
        parts = []
        for start in range(0, len(ids), rows_at_once):
            tokens = model.pe_embedding(ids[start : start + rows_at_once])
            tokens = torch.nn.functional.normalize(tokens, dim=1)
            parts.append(model.encoder(tokens) * math.sqrt(model.d_model))
        return torch.cat(parts)

    def _embed_batch(self, encoded, rows, bias):
        """Rows of ``encoded`` per (cell, position) and their key-padding bias -> embeddings."""
        import torch

        model = self.model.model
        src = model.pos_encoder(encoded[rows.T])
        *layers, last = model.transformer_encoder.layers
        for layer in layers:
            src = layer(src, src_key_padding_mask=bias)
        cls = _cls_through_last_layer(last, src, bias)
        return torch.nn.functional.normalize(model.decoder(cls)[0], dim=1)
