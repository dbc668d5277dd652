"""The model's own commands: validate, pretrain, import-checkpoint, embed, quickstart."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import InputError
from ._common import (PLOT_SUFFIXES, GeneColOpt, LayerOpt, OverwriteOpt, RawOpt, _STATE, _at_least, _check_models,
                      _removed_on_error, _staged, _user_errors, app, out)

log = logging.getLogger(__name__)
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")  # what --precision takes (16-mixed: GPUs)


@app.command()
def validate(
    data: Path = typer.Argument(..., help="h5ad, h5mu, 10x folder or .h5, or csv."),
    layer: Optional[str] = LayerOpt,
    use_raw: bool = RawOpt,
    gene_column: Optional[str] = GeneColOpt,
    model: Optional[Path] = typer.Option(None, "--model", help="Check the genes against this model's vocabulary "
                                         "(a checkpoint directory, or 'bundled'); a problem is then an error."),
    modality: str = typer.Option("rna", help="Modality of an .h5mu file."),
) -> None:
    """Check a data file: value kind (raw counts, log-normalised, scaled), NaN, empty cells, gene ids. Without
    --model the file is checked as pretraining input, and its genes are also matched against the bundled model's
    vocabulary (the one integrate starts from; embed's and annotate's default builds share it): a note says whether
    that model can read it."""
    from ..data.io import read, select_matrix
    from ..data.multiomics import canonical_modality
    from ..data.validate import validate as _validate
    from ..data.validate import vocabulary_overlap
    from ..data.vocab import GeneVocab
    from ..model import VOCAB_FILE
    from ..pretrained import DEFAULT_MODEL, available, bundled_name, model_path

    with _user_errors():
        _check_models(model)
        adata = select_matrix(read(data, layer=layer, use_raw=use_raw, modality=modality), gene_column=gene_column)
        folder = None if model is None else (model_path(bundled_name(model)) if bundled_name(model) else Path(model))
        vocab = None if folder is None else GeneVocab.load(folder / VOCAB_FILE)
        report = _validate(adata, vocab=vocab, raise_on_error=False,
                           purpose="pretraining input" if model is None else f"input of the model {model}")
        bundled = None
        if report.ok and model is None and canonical_modality(modality) == "rna" and available():
            bundled = vocabulary_overlap(adata, GeneVocab.load(model_path() / VOCAB_FILE))
            report.vocab_overlap, report.n_vocab_matched = bundled.vocab_overlap, bundled.n_vocab_matched
            report.vocab_name = f"bundled model {DEFAULT_MODEL}'s (no --model; note below)"
        out.print(report.summary(with_errors=False), highlight=False)  # the errors: once, as the Error line
        if not report.ok:
            raise InputError(report.error_message())
        if bundled is not None:
            if bundled.ok:
                out.print(f"bundled model {DEFAULT_MODEL} (the default of integrate; embed's and annotate's "
                          "default builds share its vocabulary): "
                          f"{bundled.n_vocab_matched:,} of the file's genes are in its vocabulary "
                          f"({bundled.vocab_overlap:.1%}).", highlight=False, soft_wrap=True)
            else:
                out.print(f"Note: the bundled model {DEFAULT_MODEL} (and embed's default builds, which share its "
                          f"vocabulary), used without --model, cannot read this file: {bundled.error_message()}",
                          highlight=False, soft_wrap=True)


@app.command()
def pretrain(
    data: Optional[List[str]] = typer.Argument(None, help="Data files (h5ad, ...), folders of h5ad shards, "
                                               "TileDB-SOMA experiments (local folder or soma://URI)."),
    out_dir: Path = typer.Option(..., "--out", help="Checkpoint directory to write."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with sections model, tokenizer, train, "
                                          "data (corpus sources, obs filter, streaming)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Override train.max_steps."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override train.seed."),
    precision: Optional[str] = typer.Option(None, "--precision", help="Override train.precision: 32-true (default) "
                                            "or bf16-mixed (bfloat16 autocast: ~1.2x faster steps on a CPU with "
                                            "bfloat16 instructions, e.g. AVX512-BF16 or AMX, and on GPUs)."),
    n_top_genes: Optional[int] = typer.Option(None, "--n-top-genes", help="Keep only this many HVGs."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out from its "
                                "checkpoints/last.ckpt (same data and settings)."),
    overwrite: bool = OverwriteOpt,
    soma_layer: Optional[str] = typer.Option(None, "--soma-layer", help="X layer of TileDB-SOMA experiments "
                                             "(default: Census's 'raw', else the experiment's only layer)."),
    soma_gene_column: Optional[str] = typer.Option(None, "--soma-gene-column", help="var column naming the genes "
                                                   "of TileDB-SOMA experiments (default: Census's "
                                                   "'feature_name', else e.g. 'var_id' of tiledbsoma.io.from_h5ad)."),
    layer: Optional[str] = LayerOpt,
    use_raw: bool = RawOpt,
    gene_column: Optional[str] = GeneColOpt,
) -> None:
    """Pretrain a new model with masked expression modelling.

    One data file is read into memory; several h5ad files, folders of h5ad shards and TileDB-SOMA experiments
    are streamed block by block (data.stream: true / false decides for plain files), and the progress bar
    shows cells/s and tokens/s. Logs go to OUT/logs/metrics.csv and OUT/tensorboard (tensorboard --logdir OUT).
    """
    from ..data.corpus import CorpusConfig
    from ..data.files import check_model_dir, clear_dir
    from ..data.io import read
    from ..train.config import TrainConfig, load_run_config, objective_loss_weights
    from ..train.pretrain import pretrain as _pretrain
    from ..train.resume import check_resume

    with _user_errors(), _removed_on_error(out_dir):
        _at_least(1, max_steps=max_steps, n_top_genes=n_top_genes)
        if resume and overwrite:
            raise InputError("--resume continues the run in --out and --overwrite replaces it: give one of them.")
        check_model_dir(out_dir, overwrite=overwrite or resume, sources=[Path(d) for d in data or []
                                                                          if "://" not in d])
        run = load_run_config(config) if config else {"model": {}, "tokenizer": None, "train": None,
                                                      "data": CorpusConfig()}
        train, dcfg, data = run["train"], run["data"], list(data or [])
        if precision is not None and precision not in PRECISIONS:
            raise InputError(f"--precision {precision!r}: give one of {', '.join(PRECISIONS)}.")
        overrides = {k: v for k, v in (("max_steps", max_steps), ("seed", seed), ("precision", precision))
                     if v is not None}
        if overrides:
            if train is None:  # pretrain()'s defaults: the profile objective with continuous values, else GEP + MVC
                train = TrainConfig(**objective_loss_weights(run["tokenizer"], run["model"]))
            train = replace(train, **overrides)
        if not data and not dcfg.sources:
            raise InputError("Give DATA (files, folders of h5ad shards, SOMA experiments) or data.sources in --config.")
        if resume:  # the checkpoint and the settings, before the data are read
            check_resume(out_dir, train or TrainConfig(), run["model"], run["tokenizer"])
        if soma_layer is not None or soma_gene_column is not None:
            dcfg = replace(dcfg, soma_layer=soma_layer or dcfg.soma_layer,
                           soma_gene_column=soma_gene_column or dcfg.soma_gene_column)
        if dcfg.streams(data):
            if layer is not None or use_raw or gene_column is not None:
                dcfg = replace(dcfg, layer="raw" if use_raw else (layer or dcfg.layer),
                               gene_column=gene_column or dcfg.gene_column)
            source = dcfg.open(data)
        else:
            source = [read(p) for p in data]
        if overwrite and out_dir.is_dir():
            clear_dir(out_dir)
        res = _pretrain(source, out_dir=out_dir, model_config=run["model"], tokenizer_config=run["tokenizer"],
                        train_config=train, layer=None if not isinstance(source, list) else layer,
                        use_raw=use_raw and isinstance(source, list),
                        gene_column=None if not isinstance(source, list) else gene_column,
                        n_top_genes=n_top_genes, resume=resume, data_config=dcfg)
        for name, ref in (("profile", "profile_gene_mean"), ("gep", "gep_gene_mean")):
            if f"val/{name}" in res.val_end:
                start, end = res.val_start.get(f"val/{name}", float("nan")), res.val_end[f"val/{name}"]
                reference = res.val_end.get(f"val/{ref}")
                out.print(f"held-out {name} loss before -> after training: {start:.4f} -> {end:.4f}" + (
                    f" (predicting each gene's mean: {reference:.4f})" if reference is not None else ""),
                    soft_wrap=True)
        out.print(f"model written to {out_dir}")


@app.command("import-checkpoint")
def import_checkpoint(
    source: Path = typer.Argument(..., help="Release folder with best_model.pt, args.json and vocab.json."),
    out_dir: Path = typer.Option(..., "--out", help="scmamba2 checkpoint directory to write."),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Import the tensors that fit; start the "
                                       "rest from initialisation (listed in import_report.json)."),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Convert an SC-MAMBA2 / scGPT-layout release checkpoint into an scmamba2 checkpoint directory."""
    from ..data.files import check_model_dir, write_json
    from ..train.import_checkpoint import import_checkpoint as _import

    with _user_errors():
        check_model_dir(out_dir, overwrite=overwrite, sources=[source])
        model, report = _import(source, allow_partial=allow_partial)
        with _staged(out_dir) as stage:
            model.save_pretrained(stage)
            write_json(stage / "import_report.json", report.to_dict(), indent=2)
        out.print(f"{len(report.mapped)} tensors mapped, {len(report.converted)} converted, "
                  f"{len(report.not_mapped)} not mapped, {len(report.uninitialised)} left at initialisation "
                  f"-> {out_dir} (details in import_report.json)")


@app.command()
def embed(
    data: Path = typer.Argument(..., help="Data file to embed."),
    models: List[Path] = typer.Option([], "--model", help="Checkpoint directory or bundled model name; repeat it "
                                      "to put several models' embeddings side by side. Default (or 'bundled'): "
                                      "the two bundled builds scmamba2-pbmc-small and scmamba2-pbmc-small-seed2 "
                                      "side by side."),
    out_path: Path = typer.Option(..., "--out", help="Output .h5ad with obsm['X_scmamba2']."),
    umap: Optional[Path] = typer.Option(None, "--umap", help="Also write a UMAP PNG of the embedding."),
    color: List[str] = typer.Option([], "--color", help="obs column(s) to colour the UMAP by."),
    all_genes: bool = typer.Option(False, "--all-genes", help="Read every measured gene, zeros included."),
    max_len: Optional[int] = typer.Option(None, "--max-len", help="Tokens per cell (<cls> included): a random "
                                          "subset of that many genes. Default: every expressed gene."),
    readout: Optional[str] = typer.Option(None, "--readout", help="'profile' (the default for a model with a "
                                          "linear profile decoder: distances as between the decoded profiles) or "
                                          "'raw' (the pooled encoder output)."),
    batch_size: int = typer.Option(64, "--batch-size", help="At most this many cells per batch."),
    max_tokens: int = typer.Option(65536, "--max-tokens", help="At most this many (padded) tokens per batch."),
    batch_key: Optional[str] = typer.Option(None, "--batch-key", help="obs column of each cell's batch, for a model integrated with --dsbn (its batch names are read from the model's integration.json)."),
    modality: str = typer.Option("rna", "--modality", help="Modality of an .h5mu file to embed."),
    layer: Optional[str] = LayerOpt,
    use_raw: bool = RawOpt,
    gene_column: Optional[str] = GeneColOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Embed cells with a trained model, or several side by side (default: the two bundled builds), into
    obsm['X_scmamba2']."""
    from ..data.files import check_output, read_json, write_h5ad
    from ..data.io import read
    from ..tasks.embed import embed as _embed

    with _user_errors():
        _check_models(*models)
        check_output(out_path, [data, *models], overwrite=overwrite, suffixes=(".h5ad",))
        if umap is not None:
            check_output(umap, [data, *models, out_path], option="--umap", overwrite=overwrite, suffixes=PLOT_SUFFIXES)
        model = None if not models else models[0] if len(models) == 1 else list(models)
        _at_least(1, batch_size=batch_size, max_tokens=max_tokens)
        if umap is not None and not color:
            raise InputError("--umap needs at least one --color KEY (an obs column) to colour the cells by")
        adata = read(data, modality=modality, standardise=False)  # written back: X as the user stored it
        if data.suffix.lower() == ".h5mu":
            log.info("Embedding the %r modality; --modality NAME embeds another", modality)
        missing = [c for c in color if c not in adata.obs]
        if missing:
            raise InputError(f"--color {missing} not found in obs; available columns: {list(adata.obs.columns)}")
        categories = None
        if batch_key is not None:
            from ..tasks.integrate import META_FILE

            if len(models) != 1:
                raise InputError("--batch-key applies to one model trained with batches (scmamba2 integrate "
                                 "--save-model DIR): pass it with a single --model DIR")
            meta = model / META_FILE
            if not meta.is_file():
                raise InputError(f"--batch-key needs the batch names the model was trained with: {meta} is missing "
                                 "(it is written by `scmamba2 integrate --save-model DIR`)")
            categories = read_json(meta)["batch_categories"]
        _embed(adata, model, batch_size=batch_size, max_tokens=max_tokens, layer=layer, use_raw=use_raw,
               gene_column=gene_column, all_genes=all_genes, max_len=max_len, readout=readout,
               batch_key=batch_key, batch_categories=categories, progress=_STATE["verbose"])
        write_h5ad(adata, out_path)
        out.print(f"{adata.n_obs} cells embedded -> {out_path} (obsm['X_scmamba2'])")
        if umap is not None:
            from ..eval.plots import umap_png

            umap_png(adata, use_rep="X_scmamba2", color=color, path=umap)
            out.print(f"UMAP -> {umap}")


@app.command()
def quickstart(
    out_dir: Path = typer.Option(Path("out/quickstart"), "--out", help="Where to write the results."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Fine-tuning steps (default: the demo's 200)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """The demo: embed's default (the two bundled builds side by side) on scanpy's pbmc68k_reduced, zero-shot and
    after a short self-supervised fine-tune of each build, each compared with PCA by kNN label transfer."""
    from ..quickstart import run_quickstart

    with _user_errors():
        _at_least(1, max_steps=max_steps)
        summary = run_quickstart(out_dir, max_steps=max_steps, seed=seed)
        out.print(summary)
