"""The model an annotator starts from: a small new one on the reference's most variable genes, or a pretrained one
adapted to the reference (a fresh classifier head, or the frozen encoder for the linear probe)."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from ..data.tokenize import TokenizerConfig
from ..errors import InputError
from ..model import ModelConfig, ScMamba2

log = logging.getLogger(__name__)

# Mean pooling: with the <cls> output a from-scratch model learned far more slowly on pbmc3k (held-out accuracy
# 0.33 vs 0.70 after 600 steps), and a cell type missing from the reference stood out less in the embedding.
SMALL_MODEL = dict(d_model=64, n_layers=2, headdim=16, d_state=32, chunk_size=64, dropout=0.1, cell_pooling="mean")


def new_model(adata, n_classes: int, model_config, tokenizer_config, n_top_genes, layer, use_raw,
              gene_column) -> tuple[ScMamba2, list[str]]:
    """A small new model on the reference's most variable genes (selected on the labelled reference only)."""
    from ..data.io import select_matrix
    from ..data.validate import strip_gene_prefix
    from ..data.vocab import GeneVocab

    a = select_matrix(adata, layer=layer, use_raw=use_raw, gene_column=gene_column)
    if n_top_genes is not None and n_top_genes < a.n_vars:
        from ..data.preprocess import select_hvg

        a = select_hvg(a, n_top_genes, flavor="seurat")
    genes = list(dict.fromkeys(strip_gene_prefix([str(g) for g in a.var_names])[0]))
    vocab = GeneVocab(genes)
    tok = tokenizer_config or TokenizerConfig(max_len=256, value_mode="continuous")
    mc = {**SMALL_MODEL, **(model_config or {}), "n_classes": n_classes}
    mcfg = replace(ModelConfig(vocab_size=len(vocab), **mc), n_bins=tok.n_bins, max_len=tok.max_len,
                   value_mode=tok.value_mode)
    return ScMamba2(mcfg, vocab=vocab, tokenizer_config=tok), genes


def adapted(base: ScMamba2, adata, n_classes: int, layer, use_raw, gene_column, min_overlap: float,
            probe: bool = False) -> tuple[ScMamba2, list[str]]:
    """A pretrained model with a fresh classifier of ``n_classes`` (``probe``: without heads, reading every
    expressed gene); the genes = reference genes in its vocab."""
    from ..data.io import select_matrix
    from ..data.validate import strip_gene_prefix

    if base.vocab is None:
        raise InputError("the pretrained model has no vocabulary: load it with ScMamba2.from_pretrained")
    if base.dsbn is not None:
        raise InputError("this model normalises each batch on its own (domain-specific batch norm, from "
                         "integration); annotation does not use batches: start from a model without DSBN")
    a = select_matrix(adata, layer=layer, use_raw=use_raw, gene_column=gene_column)
    names = list(dict.fromkeys(strip_gene_prefix([str(g) for g in a.var_names])[0]))
    found = np.asarray(base.vocab.lookup(names)) >= 0
    genes = [g for g, f in zip(names, found) if f]
    n_vocab = len(base.vocab.genes)
    overlap = max(len(genes) / max(len(names), 1), len(genes) / max(n_vocab, 1))
    if overlap < min_overlap or not genes:
        raise InputError(f"the reference shares only {len(genes):,} genes with the model's vocabulary ({n_vocab:,} "
                         f"genes; the reference has {len(names):,}), below the minimum overlap of {min_overlap:.0%} "
                         "on either side: check species and gene identifiers (symbols vs Ensembl ids; "
                         "gene_column= / --gene-column)")
    log.info("reference: %d of its %d genes are in the model's vocabulary of %d", len(genes), len(names), n_vocab)
    if probe:
        from ._annotate_probe import whole_cell_model

        return whole_cell_model(base), genes
    # A fresh classifier head; the batch parts of an integrated model are dropped (annotation has no batches).
    net = base.adapt(n_classes=0, dab=False, batch_embedding=False).adapt(n_classes=n_classes)
    return net, genes
