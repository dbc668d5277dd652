"""``scmamba2.embed``: cell embeddings from a trained model, written into ``adata.obsm``."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from .._keys import BATCH, CELL_INDEX, GENES, PADDING_MASK, VALUES
from ..data.collate import Collator, LengthBucketSampler, TokenizedDataset, token_budget_batches
from ..data.prepare import prepare_cells
from ..data.tokenize import TokenizerConfig
from ..errors import InputError
from .._malloc import tune_cpu_allocator
from ..model import ScMamba2

log = logging.getLogger(__name__)


def load_model(model: ScMamba2 | str | Path | None) -> ScMamba2:
    """A model object as is, one loaded from a checkpoint directory, or (None) the bundled pretrained model."""
    if model is None:
        from ..pretrained import load

        return load()
    return model if isinstance(model, ScMamba2) else ScMamba2.from_pretrained(model)


@torch.no_grad()
def embed(
    adata,
    model: ScMamba2 | str | Path | None = None,
    *,
    key_added: str = "X_scmamba2",
    batch_size: int = 64,
    max_tokens: int | None = 65536,
    layer: str | None = None,
    use_raw: bool = False,
    gene_column: str | None = None,
    all_genes: bool = False,
    device: str | None = None,
    progress: bool = True,
    batch_key: str | None = None,
    batch_categories: Sequence[str] | None = None,
    copy: bool = False,
):
    """Embed every cell of ``adata`` with the cell embedding of ``model`` (its ``cell_pooling`` readout).

    Parameters
    ----------
    adata
        Cells x genes; raw counts (or log-normalised values) in ``X``, ``layers[layer]`` or ``raw``.
    model
        An :class:`~scmamba2.ScMamba2`, the path of a checkpoint directory, or None for the bundled pretrained
        model (:mod:`scmamba2.pretrained`).
    key_added
        Key in ``obsm`` for the embedding.
    layer, use_raw, gene_column
        Take the matrix from a layer or ``.raw``; name genes by a ``var`` column instead of ``var_names``.
    batch_size, max_tokens
        At most ``batch_size`` cells and (padded) ``max_tokens`` tokens per batch: the memory budget of a
        batch. A cell longer than ``max_tokens`` is embedded alone.
    all_genes
        Read each cell with all of its measured vocabulary genes, zeros included (whole-transcriptome mode),
        instead of the model's tokenizer setting (expressed genes, up to ``max_len``).
    device
        Torch device; default CUDA when available, else CPU.
    batch_key, batch_categories
        For a model with domain-specific batch norm (e.g. from :func:`scmamba2.integrate` with ``dsbn``):
        the ``obs`` column of each cell's batch and the batch names the model was trained with, in index order.
        A batch the model does not know is an error.
    copy
        Return a modified copy instead of writing into ``adata``.

    Writes
    ------
    ``obsm[key_added]``
        ``(n_cells, d_model)`` float32 cell embeddings.
    ``uns['scmamba2'][key_added]``
        The settings used (model config, tokenizer config, genes matched).

    Every cell is tokenised the same way whatever the batch it falls in (subsampling is seeded per cell),
    so batch size and order never change an embedding.
    """
    tune_cpu_allocator()
    model = load_model(model)
    if model.vocab is None:
        raise ValueError("the model has no vocabulary attached: load it with ScMamba2.from_pretrained")
    adata = adata.copy() if copy else adata
    tok = model.tokenizer_config or TokenizerConfig(n_bins=model.config.n_bins, value_mode=model.config.value_mode)
    if batch_size < 1:
        raise InputError(f"batch_size={batch_size} (--batch-size) must be at least 1 cell")
    if max_tokens is not None and max_tokens < tok.max_len:
        raise InputError(f"max_tokens={max_tokens} (--max-tokens) is less than one cell of this model ({tok.max_len} "
                         f"tokens): every cell would be cut or embedded alone. Give at least {tok.max_len} (the default "
                         "65536 suits most machines).")
    if all_genes:
        tok = replace(tok, include_zeros="all", max_len=len(model.vocab) + 1)
    prepared = prepare_cells(adata, model.vocab, tok, layer=layer, use_raw=use_raw, gene_column=gene_column,
                             purpose="embed")
    cells = prepared.cells
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(dev).eval()

    ds = TokenizedDataset(cells, batch=_batch_codes(adata, model, batch_key, batch_categories))
    lengths = np.minimum(np.asarray(cells.lengths), tok.max_len)
    if max_tokens is None:
        sampler = LengthBucketSampler(lengths, batch_size=batch_size, shuffle=False)
    else:
        sampler = token_budget_batches(lengths, max_tokens=max_tokens, max_batch_size=batch_size)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=Collator(pad_id=model.vocab.pad_id))
    emb = np.zeros((adata.n_obs, model.config.d_model), dtype=np.float32)
    from tqdm.auto import tqdm

    with tqdm(total=len(cells), desc="embedding cells", unit="cell", disable=not progress) as bar:
        for batch in loader:
            rows = batch.pop(CELL_INDEX).numpy()  # rows of adata
            batch = {k: v.to(dev) for k, v in batch.items()}
            states = model.encode(batch[GENES], batch[VALUES], batch[PADDING_MASK], batch.get(BATCH))
            emb[rows] = model.cell_embedding(states, batch[PADDING_MASK]).float().cpu().numpy()
            bar.update(len(rows))
    adata.obsm[key_added] = emb
    adata.uns.setdefault("scmamba2", {})[key_added] = _without_none({
        "model": model.config.to_dict(),
        "tokenizer": tok.to_dict(),
        "vocab_overlap": prepared.report.vocab_overlap,
        "n_cells_without_vocab_genes": prepared.n_empty,
    })
    return adata if copy else None


def _batch_codes(adata, model: ScMamba2, batch_key: str | None, categories: Sequence[str] | None):
    """Index of each cell's batch among ``categories`` (None when the model takes no batch)."""
    needs = model.dsbn is not None  # a batch embedding feeds only the expression heads, not the embedding
    if batch_key is None:
        if needs:
            raise InputError("this model was trained with domain-specific batch norm: pass "
                             "batch_key (the obs column of each cell's batch) and the model's batch_categories")
        return None
    if not needs:
        log.info("the model takes no batch input: batch_key %r is not used", batch_key)
        return None
    if batch_key not in adata.obs:
        raise InputError(f"batch_key {batch_key!r} is not an obs column; available: {list(adata.obs.columns)}")
    if categories is None:
        raise InputError("pass batch_categories: the batch names the model was trained with, in index order")
    categories = [str(c) for c in categories]
    if len(categories) != model.config.n_batches:
        raise InputError(f"{len(categories)} batch_categories given but the model knows {model.config.n_batches} "
                         "batches")
    values = adata.obs[batch_key].astype(str).to_numpy()
    index = {c: i for i, c in enumerate(categories)}
    unknown = sorted(set(values) - set(index))
    if unknown:
        raise InputError(f"obs[{batch_key!r}] has batches the model was not trained with: {unknown[:10]} (it knows "
                         f"{categories[:10]}); a batch-aware model cannot embed an unseen batch: integrate the data "
                         "together with the new batch, or use a model without DSBN")
    return np.array([index[v] for v in values], dtype=np.int64)


def _without_none(d: dict) -> dict:
    """h5ad cannot store None: leave such entries out."""
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}
