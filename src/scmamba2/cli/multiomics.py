"""``scmamba2 multiomics``: joint RNA + protein / ATAC models (train, predict)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError
from ._common import (PLOT_SUFFIXES, GeneColOpt, LayerOpt, OverwriteOpt, RawOpt, _at_least, _check_models, _staged,
                      _user_errors, app, out)


# --- multiomics (issue: multi-omics) ---

class _DefaultTrain(typer.core.TyperGroup):
    """``scmamba2 multiomics DATA ...`` means ``scmamba2 multiomics train DATA ...``."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["train", *args]
        return super().parse_args(ctx, args)


multiomics_app = typer.Typer(cls=_DefaultTrain, no_args_is_help=True,
                             help="Multi-omics (RNA + protein / ATAC): joint embedding (train, the default) and "
                                  "cross-modal prediction (predict).")
app.add_typer(multiomics_app, name="multiomics")


@multiomics_app.command("train")
def multiomics_train(
    data: Path = typer.Argument(..., help=".h5mu (rna + prot/adt and/or atac) or .h5ad with protein counts in obsm."),
    out_path: Path = typer.Option(..., "--out", help="Output .h5mu (or .h5ad) with obsm['X_scmamba2']."),
    model_out: Path = typer.Option(..., "--model-out", help="Directory to save the trained model in."),
    batch_key: Optional[str] = typer.Option(None, "--batch-key", help="obs column of each cell's batch (DAB)."),
    label_key: Optional[str] = typer.Option(None, "--label-key", help="obs column of cell types (evaluation and UMAP only)."),
    umap: Optional[Path] = typer.Option(None, "--umap", help="Also write a UMAP PNG of the joint embedding (coloured by --batch-key and --label-key when given)."),
    protein_key: Optional[str] = typer.Option(None, "--protein-key", help="obsm key of the protein counts (.h5ad input)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Pretrained RNA checkpoint to start from (default, or 'bundled': the bundled model)."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Train a small new model on --n-top-genes HVGs instead of starting from a pretrained one."),
    steps: int = typer.Option(1000, "--steps", help="Training steps."),
    seed: int = typer.Option(0, "--seed"),
    n_top_genes: int = typer.Option(2000, "--n-top-genes", help="RNA genes of a new model (--from-scratch; highly variable)."),
    n_top_peaks: int = typer.Option(1000, "--n-top-peaks", help="ATAC peaks kept (most variable)."),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Train a joint model of paired modalities; write the joint embedding and save the model."""
    from ..tasks.multiomics import MultiomicsConfig, multiomics
    from ..train.config import TrainConfig

    from ..data.files import check_model_dir, check_output, write_h5ad

    with _user_errors():
        from ..data.multiomics import read_multiomics, to_container

        _check_models(model)
        check_output(out_path, [data, model], overwrite=overwrite, suffixes=(".h5mu", ".h5ad"))
        if umap is not None:
            check_output(umap, [data, model, out_path], option="--umap", overwrite=overwrite, suffixes=PLOT_SUFFIXES)
        check_model_dir(model_out, overwrite=overwrite, sources=[data, model, out_path], option="--model-out")
        _at_least(1, steps=steps, n_top_genes=n_top_genes, n_top_peaks=n_top_peaks)
        color = [k for k in (batch_key, label_key) if k]  # none: one uncoloured panel
        md = read_multiomics(data, protein_key=protein_key)
        cfg = MultiomicsConfig(n_top_genes=n_top_genes, n_top_peaks=n_top_peaks)
        tcfg = TrainConfig(max_steps=steps, batch_size=32, lr=1e-3, warmup_steps=min(100, steps // 5), seed=seed)
        with _staged(model_out) as stage:
            mm = multiomics(md, batch_key=batch_key, label_key=label_key, model=model, from_scratch=from_scratch, config=cfg,
                            train_config=tcfg, protein_key=protein_key, out_dir=stage)
            write_h5ad(to_container(md, out_path), out_path)
        out.print(f"{md.n_obs} cells, modalities {', '.join(mm.spec.modalities)} -> {out_path} (obsm['X_scmamba2']); "
                  f"model -> {model_out}")
        if umap is not None:
            from ..eval.plots import umap_png

            umap_png(md.as_anndata(), use_rep="X_scmamba2", color=color, path=umap)
            out.print(f"UMAP -> {umap}")


@multiomics_app.command("predict")
def multiomics_predict(
    query: Path = typer.Option(..., "--query", help="RNA of the cells (.h5ad; or the rna modality of an .h5mu)."),
    out_path: Path = typer.Option(..., "--out", help="Output .h5ad with obsm['scmamba2_pred_<modality>']."),
    model: Optional[Path] = typer.Option(None, "--model", help="Without --reference: a directory written by `scmamba2 multiomics train ... --model-out`. With --reference: the pretrained model whose embedding finds the neighbours (default the bundled one)."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Paired RNA + protein cells (.h5mu, or .h5ad with protein counts in obsm): predict protein by the query's nearest reference cells in the pretrained embedding; nothing trained."),
    modality: str = typer.Option("prot", "--modality", help="Modality to predict: prot (adt) or atac (atac needs a joint --model)."),
    n_neighbors: int = typer.Option(15, "--n-neighbors", help="With --reference: reference cells averaged per query cell."),
    protein_key: Optional[str] = typer.Option(None, "--protein-key", help="obsm key of the reference's protein counts (.h5ad reference)."),
    layer: Optional[str] = LayerOpt,
    use_raw: bool = RawOpt,
    gene_column: Optional[str] = GeneColOpt,
    batch_key: Optional[str] = typer.Option(None, "--batch-key", help="obs column of each cell's batch, for a model trained with --batch-key (other batches: the mean batch vector)."),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Predict a modality from RNA alone: with a joint --model (the target modality's tokens are read with their
    values masked), or from a --reference of paired cells by nearest neighbours in the pretrained embedding."""
    from ..data.files import check_output, write_h5ad
    from ..data.io import read
    from ..data.multiomics import canonical_modality
    from ..tasks.multiomics import predict_modality

    with _user_errors():
        if reference is None and model is None:
            raise InputError("give --model (a joint model from `scmamba2 multiomics train`) or --reference (paired "
                             "RNA + protein cells, predicted through the bundled model's embedding)")
        if reference is not None and canonical_modality(modality) != "prot":
            raise InputError(f"--reference predicts protein only, not --modality {modality}; for ATAC give a joint "
                             "--model from `scmamba2 multiomics train`")
        if reference is None and (protein_key is not None or n_neighbors != 15):
            raise InputError("--protein-key and --n-neighbors apply to --reference only")
        if reference is not None and batch_key is not None:
            raise InputError("--batch-key applies to a joint --model trained with batches, not to --reference")
        _at_least(1, n_neighbors=n_neighbors)
        _check_models(model)
        check_output(out_path, [query, model, reference], overwrite=overwrite, suffixes=(".h5ad",))
        q = read(query, modality="rna", standardise=False)
        if reference is not None:
            from ..tasks.transfer_modality import transfer_modality

            transfer_modality(reference, q, model=model, n_neighbors=n_neighbors, protein_key=protein_key,
                              layer=layer, use_raw=use_raw, gene_column=gene_column)
        else:
            predict_modality(q, model, modality, layer=layer, use_raw=use_raw, gene_column=gene_column,
                             batch_key=batch_key)
        write_h5ad(q, out_path)
        key = next(k for k in q.obsm if k.startswith("scmamba2_pred_"))
        out.print(f"{q.n_obs} cells x {q.obsm[key].shape[1]} features predicted -> {out_path} (obsm[{key!r}])")
