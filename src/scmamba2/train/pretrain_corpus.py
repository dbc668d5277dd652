"""Pretraining on a streamed corpus (h5ad shards, TileDB-SOMA): the path :func:`scmamba2.pretrain` takes when
it is given a :class:`~scmamba2.data.corpus.Corpus` instead of AnnData.

The corpus is never loaded whole: a :class:`~scmamba2.data.stream.CorpusDataset` reads, bins, tokenises and
collates blocks of cells in the DataLoader workers, each cell exactly once per epoch across workers and DDP
ranks. The vocabulary comes from the shards' gene tables (:func:`~scmamba2.data.corpus_vocab.build_corpus_vocab`,
report in ``vocab_report.json``) unless one is given.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from torch.utils.data import DataLoader

from .._malloc import tune_cpu_allocator
from ..data.collate import Collator
from ..data.corpus import Corpus, CorpusConfig
from ..data.corpus_panel import corpus_panel
from ..data.corpus_vocab import build_corpus_vocab
from ..data.files import write_json
from ..data.stream import CorpusDataset, CorpusLoader
from ..data.tokenize import TokenizerConfig
from ..data.vocab import GeneVocab
from ..errors import InputError
from ..model import ModelConfig, ScMamba2
from .config import TrainConfig
from .pretrain import DEFAULT_PROFILE_GENES, check_order, fit_resumable

log = logging.getLogger(__name__)


def pretrain_corpus(corpus: Corpus, *, out_dir=None, model_config: ModelConfig | dict | None = None,
                    tokenizer_config: TokenizerConfig | None = None, train_config: TrainConfig | None = None,
                    data_config: CorpusConfig | None = None, vocab: GeneVocab | None = None,
                    aliases: dict[str, str] | None = None, resume: bool = False):
    """Pretrain on a streamed corpus; arguments as :func:`scmamba2.pretrain` (see there), plus ``data_config``
    (block and buffer sizes, held-out cells, vocabulary ``min_shards``) and ``aliases`` (Ensembl id -> symbol,
    with a given ``vocab``). Returns a :class:`~scmamba2.train.pretrain.PretrainResult`."""
    import lightning.pytorch as pl
    from lightning.pytorch.utilities import rank_zero_only

    from .plan import TrainingPlan
    from .pretrain import PretrainResult

    tune_cpu_allocator()
    tcfg = train_config or TrainConfig()
    tok = tokenizer_config or TokenizerConfig(value_mode="continuous")  # as pretrain's in-memory default
    check_order(tok, tcfg)
    for name in ("panel_view_fraction", "depth_thinning", "cluster_balance"):
        if getattr(tcfg, name) > 0:
            raise InputError(f"{name} is not supported when streaming a corpus: set it to 0, or pretrain on "
                             "in-memory AnnData")
    dcfg = data_config or CorpusConfig()
    out = Path(out_dir) if out_dir is not None else None
    built = None
    if vocab is None:
        built = build_corpus_vocab(corpus, min_shards=dcfg.min_shards)
        vocab, aliases = built.vocab, built.aliases
        log.info("%s", built.report.summary())
    aliases = aliases or {}

    n_val = min(int(round(tcfg.val_fraction * corpus.n_cells)), dcfg.max_val_cells) if tcfg.val_fraction > 0 else 0
    train_ds = CorpusDataset(corpus, vocab, tok, batch_size=tcfg.batch_size, mask_ratio=tcfg.mask_ratio,
                             aliases=aliases, block_size=dcfg.block_size, buffer_size=dcfg.buffer_size,
                             heldout_cells=n_val, seed=tcfg.seed)
    # Written once the corpus could be split: a refused run leaves --out as it was.
    if built is not None and out is not None and rank_zero_only.rank == 0:  # under DDP every rank runs this
        out.mkdir(parents=True, exist_ok=True)
        built.report.write(out / "vocab_report.json")
    train_loader = CorpusLoader(train_ds, num_workers=tcfg.num_workers)
    # As in memory: continuous values default to the whole-profile objective (GEP/MVC off without a
    # train_config); its panel and per-gene statistics come from one streamed pass over the training cells.
    default_profile = DEFAULT_PROFILE_GENES if tok.value_mode == "continuous" else 0
    mcfg = model_config if isinstance(model_config, ModelConfig) else ModelConfig(
        vocab_size=len(vocab), **{"profile_genes": default_profile, **(model_config or {})})
    mcfg = replace(mcfg, vocab_size=len(vocab), n_bins=tok.n_bins, max_len=tok.max_len, value_mode=tok.value_mode)
    if train_config is None and mcfg.profile_genes:
        tcfg = replace(tcfg, gep_weight=0.0, mvc_weight=0.0)
    panel = None
    if mcfg.profile_genes:
        panel, measured = corpus_panel(train_ds, mcfg.profile_genes, min_measured=tcfg.profile_min_measured,
                                       rule=tcfg.profile_panel_rule)
        mcfg = replace(mcfg, profile_genes=len(panel))
        train_ds.set_panel(panel, measured)
    log.info("losses: %s", ", ".join(f"{k} x {w:g}" for k, w in (("profile", tcfg.profile_weight if panel is not None else 0.0),
             ("GEP", tcfg.gep_weight), ("MVC", tcfg.mvc_weight if mcfg.mvc else 0.0)) if w > 0) or "none")
    pl.seed_everything(tcfg.seed, workers=True, verbose=False)
    model = ScMamba2(mcfg, vocab=vocab, tokenizer_config=tok)
    if panel is not None:
        model.profile_head.set_panel(panel.ids, panel.mean, panel.std)

    val_batches = None
    held = train_ds.heldout() if n_val else []
    if held:
        # Masks of the held-out cells are drawn once, so every validation sees the same task.
        val_collate = Collator(pad_id=vocab.pad_id, mask_ratio=tcfg.mask_ratio, seed=tcfg.seed + 1)
        val_batches = DataLoader([val_collate(held[s:s + tcfg.batch_size]) for s in range(0, len(held),
                                                                                         tcfg.batch_size)],
                                 batch_size=None)

    plan = TrainingPlan(model, tcfg)
    trainer, val_start, val_end = fit_resumable(plan, tcfg, out, resume=resume, train_loader=train_loader,
                                                val_batches=val_batches)
    if out is not None and trainer.is_global_zero:
        model.save_pretrained(out)
        write_json(out / "train_config.json", tcfg.to_dict(), indent=2)
        write_json(out / "data_config.json", dcfg.to_dict(), indent=2)
        if aliases:
            write_json(out / "gene_aliases.json", aliases, indent=1)
        summary = {"val_start": val_start, "val_end": val_end, "n_train_cells": int(train_ds.n_cells),
                   "n_val_cells": len(held), "n_shards": len(corpus), "steps": int(trainer.global_step)}
        write_json(out / "train_summary.json", summary, indent=2)
        log.info("model saved to %s", out)
    return PretrainResult(model=model, out_dir=out, val_start=val_start or {}, val_end=val_end or {},
                          n_train_cells=int(train_ds.n_cells), n_val_cells=len(held))
