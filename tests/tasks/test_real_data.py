"""End to end on real files from ../shared/data (skipped cleanly when it is absent)."""

import numpy as np
import torch

from scmamba2 import ModelConfig, ScMamba2, TokenizerConfig, embed, read
from scmamba2.data.vocab import GeneVocab


def test_embed_pbmc3k_and_10x_folder(shared_data):
    pbmc = read(shared_data / "pbmc3k_raw_labeled.h5ad")[:120].copy()  # 32,738 genes
    chr21 = read(shared_data / "10x_v3_chr21_subset" / "filtered_feature_bc_matrix")
    torch.manual_seed(0)
    vocab = GeneVocab(list(dict.fromkeys([*pbmc.var_names, *chr21.var_names])))
    cfg = ModelConfig(vocab_size=len(vocab), d_model=32, n_layers=1, d_state=16, headdim=16, dropout=0.0)
    model = ScMamba2(cfg, vocab=vocab, tokenizer_config=TokenizerConfig(max_len=256)).eval()
    for adata in (pbmc, chr21):
        embed(adata, model, progress=False)
        X = adata.obsm["X_scmamba2"]
        assert X.shape == (adata.n_obs, 32) and np.isfinite(X).all()


def test_gene_column_matches_ensembl_named_data(shared_data):
    """pbmc3k carries Ensembl ids in var['gene_ids']: a vocabulary of ids matches through gene_column."""
    pbmc = read(shared_data / "pbmc3k_raw_labeled.h5ad")[:40].copy()
    vocab = GeneVocab(list(pbmc.var["gene_ids"].astype(str)))
    cfg = ModelConfig(vocab_size=len(vocab), d_model=32, n_layers=1, d_state=16, headdim=16, dropout=0.0)
    model = ScMamba2(cfg, vocab=vocab, tokenizer_config=TokenizerConfig(max_len=128)).eval()
    embed(pbmc, model, gene_column="gene_ids", progress=False)
    assert np.std(pbmc.obsm["X_scmamba2"], axis=0).mean() > 1e-4


def test_whole_transcriptome_embedding(shared_data):
    """--all-genes: each cell read with all 32,738 measured genes, zeros included, one cell per batch."""
    pbmc = read(shared_data / "pbmc500_fullgenes.h5ad")[:3].copy()
    vocab = GeneVocab(list(pbmc.var_names))
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(vocab), d_model=32, n_layers=1, d_state=16, headdim=16, dropout=0.0)
    model = ScMamba2(cfg, vocab=vocab, tokenizer_config=TokenizerConfig(max_len=256)).eval()
    embed(pbmc, model, all_genes=True, max_tokens=40_000, progress=False)
    info = pbmc.uns["scmamba2"]["X_scmamba2"]["tokenizer"]
    assert info["include_zeros"] == "all" and info["max_len"] >= pbmc.n_vars + 1
    assert np.isfinite(pbmc.obsm["X_scmamba2"]).all()


def test_default_hvg_model_accepts_its_own_data(shared_data, tmp_path):
    """integrate --from-scratch and annotate --from-scratch build the model on 2,000 HVGs of ifnb1k's 14,053 genes and
    then read the same data (issue 17, item 5: it was refused, 2,000 of 14,053 genes being below 50 %)."""
    import anndata as ad
    from typer.testing import CliRunner

    from scmamba2.cli import app

    data = shared_data / "ifnb1k.h5ad"
    runner = CliRunner()
    res = runner.invoke(app, ["--quiet", "integrate", str(data), "--batch-key", "condition", "--method", "finetune", "--from-scratch",
                              "--steps", "2", "--out", str(tmp_path / "i.h5ad"), "--save-model", str(tmp_path / "im")])
    assert res.exit_code == 0, res.output
    from scmamba2.data.vocab import GeneVocab

    assert len(GeneVocab.load(tmp_path / "im" / "vocab.json").genes) == 2000
    emb = ad.read_h5ad(tmp_path / "i.h5ad").obsm["X_scmamba2"]
    assert emb.shape[0] == 832 and np.isfinite(emb).all()
    res = runner.invoke(app, ["--quiet", "annotate", "--reference", str(data), "--label-key", "cell_type",
                              "--query", str(data), "--epochs", "0.05", "--from-scratch",
                              "--out", str(tmp_path / "a.h5ad")])
    assert res.exit_code == 0, res.output
    assert ad.read_h5ad(tmp_path / "a.h5ad").obs["scmamba2_label"].notna().all()


def test_integrate_finetune_starts_from_the_bundled_model(shared_data, tmp_path):
    """integrate --method finetune without --model fine-tunes the bundled model on its own (whole-profile) objective,
    with the batch-conditioned decoder and DAB (issue 17, items 1 and 3)."""
    import anndata as ad
    from typer.testing import CliRunner

    from scmamba2 import ScMamba2
    from scmamba2.cli import app
    from scmamba2.pretrained import DEFAULT_MODEL, load

    data = ad.read_h5ad(shared_data / "ifnb1k.h5ad")[::4].copy()  # 208 cells
    data.write_h5ad(tmp_path / "d.h5ad")
    res = CliRunner().invoke(app, ["--quiet", "integrate", str(tmp_path / "d.h5ad"), "--batch-key", "condition",
                                   "--method", "finetune", "--steps", "2", "--out", str(tmp_path / "i.h5ad"),
                                   "--save-model", str(tmp_path / "im")])
    assert res.exit_code == 0, res.output
    tuned, bundled = ScMamba2.from_pretrained(tmp_path / "im"), load(DEFAULT_MODEL)
    assert tuned.vocab == bundled.vocab and tuned.config.d_model == bundled.config.d_model
    assert tuned.batch_encoder is not None and tuned.batch_discriminator is not None
    assert tuned.profile_head.gene_ids.tolist() == bundled.profile_head.gene_ids.tolist()
    info = ad.read_h5ad(tmp_path / "i.h5ad").uns["scmamba2"]["X_scmamba2"]["integration"]
    assert set(info["final_losses"]) >= {"profile", "dab"} and "gep" not in info["final_losses"]
    res = CliRunner().invoke(app, ["integrate", str(tmp_path / "d.h5ad"), "--batch-key", "condition", "--method",
                                   "finetune", "--n-top-genes", "500", "--out", str(tmp_path / "j.h5ad")])
    assert res.exit_code == 1 and "--from-scratch" in res.output
