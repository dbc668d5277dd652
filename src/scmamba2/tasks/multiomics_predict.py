"""Cross-modal prediction and the forward pass of a multi-omics model over tokenised cells.

:func:`predict_modality` reads each cell's RNA tokens plus every feature token of the target modality with its
value masked (``MASK_VALUE``), the condition the cross-modal masking of training creates, and reads the model's
prediction at those tokens (:attr:`~scmamba2.tasks.multiomics.MultiomicsConfig.predict_head`).
"""

from __future__ import annotations

import logging

import numpy as np

from .._keys import MASK_VALUE
from ..data.multiomics import MultiomicCollator, canonical_modality, joint_cells
from ..data.tokenize import TokenizedCells, TokenizerConfig
from ..data.vocab import first_columns
from ..errors import InputError

log = logging.getLogger(__name__)

__all__ = ["predict_modality", "run_model", "model_cells"]


def _model_genes(mm, a, min_fraction: float):
    """``a`` restricted to the model's RNA genes (matched after stripping a genome prefix, and ignoring case as
    :meth:`~scmamba2.data.vocab.GeneVocab.lookup` does; a gene in several columns keeps its first), and how many
    of them it has; an :class:`~scmamba2.InputError` below ``min_fraction`` of them."""
    from ..data.validate import strip_gene_prefix

    genes = list(mm.rna_genes)
    names, _ = strip_gene_prefix(list(map(str, a.var_names)))
    first = first_columns(names, genes, what="the model's RNA genes")
    found = len(first)
    if found == 0 or found < min_fraction * len(genes):
        missing = [g for i, g in enumerate(genes) if i not in first][:5]
        raise InputError(f"the query has {found} of the model's {len(genes)} RNA genes ({found / len(genes):.0%}, "
                         f"below {min_fraction:.0%}; missing e.g. {missing}; the query's genes look like "
                         f"{names[:3]}). Check that query and model use the same gene identifiers (symbols vs "
                         "Ensembl ids: --gene-column NAME picks a var column) and that the query holds RNA")
    return a[:, np.sort(np.fromiter(first.values(), dtype=np.int64, count=found))], found


def model_cells(mm, rna, others: dict[str, np.ndarray]) -> TokenizedCells:
    """Joint tokens of every cell (RNA through the shared validate + tokenise path, on the model's genes)."""
    from ..data.prepare import prepare_cells

    rna, _ = _model_genes(mm, rna, 0.0)
    net = mm.model
    tok = net.tokenizer_config or TokenizerConfig(n_bins=net.config.n_bins, value_mode=net.config.value_mode)
    rna_cells = net.input_cells(prepare_cells(rna, net.vocab, tok, purpose="multiomics",
                                              seed=mm.info["train"]["seed"]).cells)
    return joint_cells(rna_cells, others, mm.spec, net.vocab, mm.config.rna_max_len)


def run_model(mm, cells: TokenizedCells, *, target: str | None = None, batch_codes: np.ndarray | None = None,
              batch_size: int = 64, max_tokens: int = 65536,
              device: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Cell embeddings ``(n, d_model)`` of tokenised cells and, with ``target``, the prediction of the model's
    ``predict_head`` (``mvc``: cell-conditioned expression head; ``gep``: per-token expression head) at that
    modality's feature tokens ``(n, n_features)`` (NaN where a cell has no such token). A model with a batch
    decoder reads ``batch_codes`` (each cell's index among the model's batches, -1 = unknown: the mean batch
    vector); without them every cell is an unknown batch."""
    import torch
    from torch.utils.data import DataLoader

    from .._keys import CELL_INDEX, GENES
    from ..data.collate import TokenizedDataset, token_budget_batches

    net, vocab = mm.model, mm.model.vocab
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = net.to(dev).eval()
    col = np.full(len(vocab), -1, dtype=np.int64)
    n_feat = 0
    if target is not None:
        ids = mm.spec.token_ids(vocab, target)
        col[ids], n_feat = np.arange(len(ids)), len(ids)
    col_t = torch.as_tensor(col)
    head = mm.config.predict_head
    emb = np.zeros((len(cells), net.config.d_model), dtype=np.float32)
    pred = np.full((len(cells), n_feat), np.nan, dtype=np.float32) if target is not None else None
    batches = token_budget_batches(np.asarray(cells.lengths), max_tokens=max_tokens, max_batch_size=batch_size)
    if net.batch_encoder is not None and batch_codes is None:
        batch_codes = np.full(len(cells), -1, dtype=np.int64)
    loader = DataLoader(TokenizedDataset(cells, batch=batch_codes), batch_sampler=batches,
                        collate_fn=MultiomicCollator(vocab.pad_id, mm.spec.modality_of(vocab)))
    with torch.no_grad():
        for batch in loader:
            rows = batch.pop(CELL_INDEX).numpy()
            out = net({k: v.to(dev) for k, v in batch.items()})
            emb[rows] = out.cell_emb.float().cpu().numpy()
            if pred is not None:
                c = col_t[batch[GENES]]  # (B, L) feature column or -1
                r, p = torch.nonzero(c >= 0, as_tuple=True)
                values = out.mvc_pred if head == "mvc" else out.expr_pred
                pred[rows[r.numpy()], c[r, p].numpy()] = values[r, p].float().cpu().numpy()
    return emb, pred


def predict_modality(
    query,
    model,
    modality: str = "prot",
    *,
    key_added: str | None = None,
    layer: str | None = None,
    use_raw: bool = False,
    gene_column: str | None = None,
    min_gene_fraction: float = 0.5,
    batch_key: str | None = None,
    batch_size: int = 64,
    device: str | None = None,
) -> None:
    """Predict a modality of each cell from its RNA alone.

    The model reads the cell's RNA tokens plus every feature token of ``modality`` with its value masked, and
    its expression head predicts those values (the same condition as the cross-modal masking in training).

    Parameters
    ----------
    query
        AnnData of RNA counts (``X``, ``layers[layer]`` or ``raw``); other genes than the model's are ignored.
    model
        A :class:`MultiomicModel` or a directory written by :func:`multiomics` / ``MultiomicModel.save``.
    modality
        ``"prot"`` (also ``"adt"``, ``"protein"``) or ``"atac"``: one of the model's non-RNA modalities.
    key_added
        ``obsm`` key of the prediction; default ``"scmamba2_pred_<modality>"``.
    min_gene_fraction
        Smallest fraction of the model's RNA genes the query must have.
    batch_key
        For a model trained with batches and ``batch_decoder``: the ``obs`` column of each query cell's batch.
        Cells of a batch the model knows are predicted as that batch, the others (and every cell without
        ``batch_key``) with the mean of the batch vectors.

    Writes
    ------
    ``obsm[key_added]``
        ``(n_cells, n_features)`` float32 predictions, in the scale the model was trained on: ``clr`` (Seurat's
        per-cell CLR of the protein counts) for a continuous-value model, per-cell bins for a binned one;
        0/1 accessibility (``binary``) or bins for ATAC.
    ``uns[key_added + '_names']``
        The feature names (without the vocabulary prefix), one per column.
    ``uns['scmamba2'][key_added]``
        The scale, the modality and the number of model genes found in the query.

    Raises
    ------
    InputError
        A modality the model does not have, or too few of the model's genes in the query.
    """
    from ..data.io import select_matrix
    from .multiomics import MultiomicModel

    mm = model if isinstance(model, MultiomicModel) else MultiomicModel.load(model)
    target = canonical_modality(modality)
    if target not in mm.spec.others:
        raise InputError(f"the model predicts the modalities {mm.spec.others}, not {modality!r}; pass --modality "
                         f"{' or '.join(mm.spec.others)}")
    if hasattr(query, "mod"):
        raise InputError("predict_modality takes the RNA AnnData: pass mdata.mod['rna'] (the CLI reads the rna "
                         "modality of an .h5mu itself)")
    a = select_matrix(query, layer=layer, use_raw=use_raw, gene_column=gene_column)
    rna, found = _model_genes(mm, a, min_gene_fraction)
    spec = mm.spec
    n_feat = len(spec.features[target])
    cells = model_cells(mm, rna, {target: np.full((rna.n_obs, n_feat), MASK_VALUE, dtype=np.float32)})
    codes = None
    if batch_key is not None and mm.model.batch_encoder is not None:
        if batch_key not in query.obs:
            raise InputError(f"batch_key {batch_key!r} is not an obs column of the query; available: "
                             f"{list(query.obs.columns)}")
        index = {c: i for i, c in enumerate(mm.info.get("batch_categories") or [])}
        values = query.obs[batch_key].astype(str).to_numpy()
        codes = np.array([index.get(v, -1) for v in values], dtype=np.int64)
        if (codes < 0).any():
            log.info("%d query cells are of batches the model was not trained on: predicted with the mean batch "
                     "vector", int((codes < 0).sum()))
    _, pred = run_model(mm, cells, target=target, batch_codes=codes, batch_size=batch_size, device=device)
    key = key_added or f"scmamba2_pred_{target}"
    query.obsm[key] = pred
    query.uns[f"{key}_names"] = np.asarray(spec.features[target], dtype=object)
    query.uns.setdefault("scmamba2", {})[key] = {"modality": target, "scale": spec.values[target],
                                                  "n_model_genes": len(mm.rna_genes), "n_genes_found": found}
    log.info("predicted %d %s features for %d cells from %d of %d model genes", n_feat, target, query.n_obs,
             found, len(mm.rna_genes))
