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
    """A model object as is, one loaded from a checkpoint directory, or (None, ``"bundled"`` or a bundled model's
    name) the bundled pretrained model."""
    from ..pretrained import DEFAULT_MODEL, bundled_name, load

    if model is None or bundled_name(model):
        return load(bundled_name(model) or DEFAULT_MODEL)
    return model if isinstance(model, ScMamba2) else ScMamba2.from_pretrained(model)


def check_start(model, from_scratch: bool, model_config=None, tokenizer_config=None) -> None:
    """A task's model options go together: a pretrained ``model`` or ``from_scratch``, not both, and a new
    model's ``model_config`` / ``tokenizer_config`` only with ``from_scratch``; an :class:`InputError` otherwise."""
    if from_scratch and model is not None:
        raise InputError("give either a pretrained model (model= / --model) or from_scratch=True (--from-scratch), "
                         "not both: leave out model, or drop from_scratch to start from it")
    if not from_scratch and (model_config is not None or tokenizer_config is not None):
        raise InputError("model_config and tokenizer_config describe a new model: pass from_scratch=True "
                         "(--from-scratch) to build one, or leave them out to start from the pretrained model")


@torch.no_grad()
def embed(
    adata,
    model: ScMamba2 | str | Path | Sequence[ScMamba2 | str | Path] | None = None,
    *,
    key_added: str = "X_scmamba2",
    batch_size: int = 64,
    max_tokens: int | None = 65536,
    layer: str | None = None,
    use_raw: bool = False,
    gene_column: str | None = None,
    all_genes: bool = False,
    max_len: int | None = None,
    readout: str | None = None,
    device: str | None = None,
    progress: bool = True,
    batch_key: str | None = None,
    batch_categories: Sequence[str] | None = None,
    copy: bool = False,
):
    """Embed every cell of ``adata`` with the cell embedding of ``model`` (its ``cell_pooling`` readout), or of
    several models side by side.

    Parameters
    ----------
    adata
        Cells x genes; raw counts (or log-normalised values) in ``X``, ``layers[layer]`` or ``raw``.
    model
        An :class:`~scmamba2.ScMamba2`, the path of a checkpoint directory, a bundled model's name, or a list
        or tuple of these: each model embeds the cells and the embeddings are put side by side (the squared
        distance between two cells is then the sum over the models). None or ``"bundled"`` (default, also as an
        item of a list): the bundled default embedding, two builds of the bundled recipe side by side (:data:`scmamba2.pretrained.DEFAULT_EMBEDDING`);
        ``"scmamba2-pbmc-small"`` reads cells with the default model alone (the one the tasks fine-tune).
    key_added
        Key in ``obsm`` for the embedding.
    layer, use_raw, gene_column
        Take the matrix from a layer or ``.raw``; name genes by a ``var`` column instead of ``var_names``.
    batch_size, max_tokens
        At most ``batch_size`` cells and (padded) ``max_tokens`` tokens per batch: the memory budget of a
        batch. A cell longer than ``max_tokens`` is embedded alone.
    all_genes
        Read each cell with all of its measured vocabulary genes, zeros included (whole-transcriptome mode),
        instead of the model's tokenizer setting (expressed genes).
    max_len
        Tokens per cell, ``<cls>`` included. None (default): every expressed gene of the cell, however many
        the model was trained with; a number: a random subset of that many genes (seeded by the cell's own
        contents), e.g. the model's training length ``model.tokenizer_config.max_len``.
    readout
        ``"profile"``: the pooled encoder output mapped into the metric of the model's linear profile decoder
        (:class:`~scmamba2.nn.heads.ProfileHead`), so that distances between cells equal distances between the
        expression profiles the model decodes for them; ``"raw"``: the pooled encoder output itself.
        None (default): ``"profile"`` for a model with a linear profile decoder, else ``"raw"``.
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
        ``(n_cells, d_model)`` float32 cell embeddings (``d_model`` summed over the models).
    ``uns['scmamba2'][key_added]``
        The settings used (model config, tokenizer config, genes matched; of the first model, with
        ``members`` and ``member_dims`` when there are several).

    Every cell is tokenised the same way whatever the batch it falls in (subsampling is seeded per cell),
    so batch size and order never change an embedding.
    """
    tune_cpu_allocator()
    names, models = embedding_models(model)
    if copy and getattr(adata, "isbacked", False):
        raise InputError("copy=True would load a backed AnnData (read with backed='r') into memory as a copy, which "
                         "anndata refuses: load it first (adata.to_memory()), or use copy=False to write the "
                         "embedding into it")
    if batch_size < 1:
        raise InputError(f"batch_size={batch_size} (--batch-size) must be at least 1 cell")
    if max_len is not None and max_len < 2:
        raise InputError(f"max_len={max_len} (--max-len) must be at least 2 (<cls> and one gene), or None for "
                         "every expressed gene")
    toks = [_tokenizer(net, max_tokens, max_len, all_genes) for net in models]
    metrics = [_readout_metric(net, readout) for net in models]
    if sum(net.dsbn is not None for net in models) > 1:
        raise InputError("several of the models were trained with domain-specific batch norm: batch_categories "
                         "names one model's batches; embed them one at a time and put the embeddings side by side")
    codes = [_batch_codes(adata, net, batch_key, batch_categories) for net in models]
    adata = adata.copy() if copy else adata
    parts, key, cells, info = [], None, None, None
    for name, net, tok, metric, batch in zip(names, models, toks, metrics, codes):
        if key != (net.vocab.tokens, tok):  # members with one vocabulary and tokenizer share the tokenised cells
            key = (net.vocab.tokens, tok)
            cells = prepare_cells(adata, net.vocab, tok, layer=layer, use_raw=use_raw, gene_column=gene_column,
                                  purpose="embed")
        desc = "embedding cells" + (f" ({Path(name).name})" if len(models) > 1 else "")
        parts.append(_embed_cells(net, cells, tok, metric, batch, adata.n_obs, batch_size=batch_size,
                                  max_tokens=max_tokens, device=device, progress=progress, desc=desc))
        if info is None:  # the first model's settings stand for all
            info = _without_none({
                "model": net.config.to_dict(),
                "tokenizer": tok.to_dict(),
                "readout": "raw" if metric is None else "profile",
                "vocab_overlap": cells.report.vocab_overlap,
                "n_cells_without_vocab_genes": cells.n_empty,
            })
    adata.obsm[key_added] = parts[0] if len(parts) == 1 else np.hstack(parts)
    if len(models) > 1:  # side by side: the first member's settings, and each member's name and width
        info["members"] = names
        info["member_dims"] = [int(p.shape[1]) for p in parts]
    adata.uns.setdefault("scmamba2", {})[key_added] = info
    return adata if copy else None


def embedding_models(model) -> tuple[list[str], list[ScMamba2]]:
    """Names and networks that ``embed`` reads cells with: the bundled default embedding's builds (``model`` None
    or ``"bundled"``, also as an item of a list), each model of a list or tuple, or the one model given (see
    :func:`load_model`)."""
    from ..pretrained import DEFAULT_EMBEDDING, is_default_embedding, load

    given = list(model) if isinstance(model, (list, tuple)) else [model]
    if not given:
        raise InputError("model=[] names no model: give a model, a list of models, or None for the bundled builds")
    names, models = [], []
    for i, m in enumerate(given):
        if is_default_embedding(m):
            names += DEFAULT_EMBEDDING
            models += [load(name) for name in DEFAULT_EMBEDDING]
        else:
            names.append(f"model {i}" if isinstance(m, ScMamba2) else str(m))
            models.append(load_model(m))
    for m in models:
        if m.vocab is None:
            raise InputError("the model has no vocabulary attached: load it with ScMamba2.from_pretrained")
    return names, models


def vocabulary_genes(models) -> set[str]:
    """Every gene some of ``models`` has in its vocabulary: the columns worth keeping before embedding with them."""
    return set().union(*(m.vocab.genes for m in models))


def _tokenizer(model: ScMamba2, max_tokens: int | None, max_len: int | None, all_genes: bool) -> TokenizerConfig:
    """How ``embed`` tokenises cells for ``model`` (every expressed gene unless ``max_len``)."""
    tok = model.tokenizer_config or TokenizerConfig(n_bins=model.config.n_bins, value_mode=model.config.value_mode)
    one_cell = max(tok.max_len, max_len or 0)  # the model's training length, or the longer one asked for
    if max_tokens is not None and max_tokens < one_cell:
        raise InputError(f"max_tokens={max_tokens} (--max-tokens) is less than one cell of {one_cell} tokens: every "
                         f"cell would be cut or embedded alone. Give at least {one_cell} (the default 65536 suits most "
                         "machines).")
    if all_genes or max_len is None:
        return replace(tok, max_len=len(model.vocab) + 1, **({"include_zeros": "all"} if all_genes else {}))
    return replace(tok, max_len=max_len)


def _embed_cells(model: ScMamba2, prepared, tok: TokenizerConfig, metric, codes, n_obs: int, *, batch_size: int,
                 max_tokens: int | None, device: str | None, progress: bool,
                 desc: str = "embedding cells") -> np.ndarray:
    """``(n_obs, d_model)`` embedding of the prepared cells by ``model`` (in the ``metric``, if any)."""
    cells = model.input_cells(prepared.cells)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(dev).eval()
    metric = None if metric is None else metric.float().to(dev)
    ds = TokenizedDataset(cells, batch=codes)
    lengths = np.minimum(np.asarray(cells.lengths), tok.max_len)
    if max_tokens is None:
        sampler = LengthBucketSampler(lengths, batch_size=batch_size, shuffle=False)
    else:
        sampler = token_budget_batches(lengths, max_tokens=max_tokens, max_batch_size=batch_size)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=Collator(pad_id=model.vocab.pad_id))
    emb = np.zeros((n_obs, model.config.d_model), dtype=np.float32)
    from tqdm.auto import tqdm

    with tqdm(total=len(cells), desc=desc, unit="cell", disable=not progress) as bar:
        for batch in loader:
            rows = batch.pop(CELL_INDEX).numpy()  # rows of adata
            batch = {k: v.to(dev) for k, v in batch.items()}
            states = model.encode(batch[GENES], batch[VALUES], batch[PADDING_MASK], batch.get(BATCH))
            z = model.cell_embedding(states, batch[PADDING_MASK]).float()
            emb[rows] = (z if metric is None else z @ metric).float().cpu().numpy()  # float32 under autocast too
            bar.update(len(rows))
    return emb


def _readout_metric(model: ScMamba2, readout: str | None) -> torch.Tensor | None:
    """``(D, D)`` map S with ``|S^T z| = |W z|`` for the linear profile decoder ``W`` (None for the raw readout)."""
    head = model.profile_head
    linear = head is not None and isinstance(head.decoder, torch.nn.Linear)
    if readout is None:
        readout = "profile" if linear else "raw"
    if readout not in ("profile", "raw"):
        raise InputError(f"readout={readout!r} (--readout) must be 'profile' or 'raw'")
    if readout == "raw":
        return None
    if not linear:
        raise InputError("readout='profile' needs a model with a linear profile decoder (profile_genes > 0, "
                         "profile_hidden 0); use readout='raw' for this model")
    w = head.decoder.weight.detach().double().cpu()  # (P, D)
    evals, evecs = torch.linalg.eigh(w.T @ w)  # W^T W = V diag(e) V^T; S = V diag(sqrt e) V^T
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def _batch_codes(adata, model: ScMamba2, batch_key: str | None, categories: Sequence[str] | None):
    """Index of each cell's batch among ``categories`` (None when the model takes no batch)."""
    needs = model.dsbn is not None  # a batch embedding feeds only the expression heads, not the embedding
    if batch_key is None:
        if needs:
            raise InputError("this model was trained with domain-specific batch norm: pass "
                             "batch_key (the obs column of each cell's batch) and the model's batch_categories")
        return None
    if not needs:
        if model.batch_encoder is not None:
            log.info("the cell embedding does not read the batch (its vector feeds only the decoders): batch_key %r "
                     "is not needed to embed", batch_key)
        else:
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
