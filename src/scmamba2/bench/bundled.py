"""Build the pretrained models that ship in the package (``scmamba2/pretrained/``): two builds of one recipe.

    .venv/bin/python scripts/build_pretrained.py [--name NAME --seed N] [--steps N] [--resume] [--export-only]

Pretrains with the package's default recipe (continuous values, mean-pooled readout, whole-profile decoder)
on the pooled human PBMC raw-count files of ``../shared/data``, leaving out every cell the zero-shot
benchmarks evaluate: all of pbmc3k, and the Kang cells of the three held-out donors
(:data:`scmamba2.bench.representation.KANG_HELDOUT`) wherever they appear (the Kang files overlap: matched by
barcode and condition). The run lives in ``--run-dir`` and resumes exactly (``--resume``), so it can span
several sittings; ``--export-only`` writes the fp16 package copy and the model card from the run's last save.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from ..pretrained import DEFAULT_EMBEDDING, DEFAULT_MODEL

log = logging.getLogger(__name__)

# File -> why it is (not) in the pool. Papalexi (THP-1 line, 299 genes), the chr21 subset, the 50-cell
# Norman subset and the 219-feature multiome file are not PBMC transcriptomes and are left out.
POOL = ["pbmc500_fullgenes.h5ad", "citefuse_eccite_pbmc500.h5ad", "pbmc_10k_protein_v3.h5ad",
        "pbmc_5k_protein_v3.h5ad", "ifnb1k.h5ad", "kang_harmony_ctrl_stim.h5ad", "kang_muscat_ctrl_stim.h5ad",
        "kang_muscat_8donors.h5ad"]
KANG = {"kang_muscat_8donors.h5ad", "kang_harmony_ctrl_stim.h5ad", "kang_muscat_ctrl_stim.h5ad", "ifnb1k.h5ad"}
NAME = DEFAULT_MODEL
MODEL = dict(d_model=128, n_layers=2, headdim=32, chunk_size=64, dropout=0.1, profile_genes=2000,
             input_genes="all", cell_pooling="mean")
TOKENIZER = dict(value_mode="continuous", max_len=256)
TRAIN = dict(max_steps=1800, batch_size=32, lr=3e-3, warmup_steps=100, mask_ratio=0.4, gep_weight=0.0,
             mvc_weight=0.0, profile_min_measured=0.15, profile_panel_rule="dispersion", val_fraction=0.03,
             val_every_n_steps=250, log_every_n_steps=25, precision="32-true",
             panel_view_fraction=0.0, depth_thinning=0.5, contrastive_weight=0.0, ema_decay=0.0, weight_decay=0.01,
             cluster_balance=0.0)
MIN_CELLS = 10  # vocabulary: genes detected in at least this many pooled cells


def _key(a) -> np.ndarray:
    return (a.obs["barcode"].astype(str) + "|" + a.obs["condition"].astype(str)).to_numpy()


def load_pool(data_dir: Path):
    """The pooled AnnDatas (raw counts, no obs columns) and a table of what was read and left out."""
    import anndata as ad
    import pandas as pd

    from .representation import KANG_HELDOUT

    k8 = ad.read_h5ad(data_dir / "kang_muscat_8donors.h5ad", backed="r")
    excluded = set(_key(k8[k8.obs["donor"].astype(str).isin(KANG_HELDOUT).to_numpy()]))
    seen: set[str] = set()
    adatas, rows = [], []
    for name in POOL:
        a = ad.read_h5ad(data_dir / name)
        n_read, dup, held = a.n_obs, 0, 0
        if name in KANG:
            key = _key(a)
            is_held = np.isin(key, list(excluded))
            is_dup = np.isin(key, list(seen)) & ~is_held
            held, dup = int(is_held.sum()), int(is_dup.sum())
            keep = ~is_held & ~is_dup
            seen.update(key[keep])
            a = a[keep].copy()
        a.obs = pd.DataFrame(index=[f"{name.removesuffix('.h5ad')}:{i}" for i in a.obs_names])
        a.var = a.var[[]]
        adatas.append(a)
        rows.append({"file": name, "cells read": n_read, "held-out donors' cells left out": held,
                     "Kang duplicates left out": dup, "cells used": a.n_obs, "genes": a.n_vars})
    return adatas, pd.DataFrame(rows)


def build(data_dir: Path, run_dir: Path, *, steps: int | None = None, resume: bool = False, seed: int = 0,
          changes: dict | None = None):
    """Pretrain (or resume) the bundled model in ``run_dir``; returns the :class:`PretrainResult`.

    ``changes``: settings of :data:`MODEL`, :data:`TOKENIZER` or :data:`TRAIN` that differ from the shipped recipe
    (a candidate), or ``seed`` (the same recipe from another seed: how far results move by chance)."""
    import torch

    from ..data.tokenize import TokenizerConfig
    from ..train.config import TrainConfig
    from ..train.pretrain import pretrain
    from .pretrain_real import corpus_vocab

    adatas, table = load_pool(data_dir)
    vocab, n_union = corpus_vocab(adatas, min_cells=MIN_CELLS)
    adatas = [a[:, a.var_names.isin(vocab.genes)].copy() for a in adatas]
    run_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(run_dir / "pool.csv", index=False)
    changes = changes or {}
    model = {**MODEL, **{k: v for k, v in changes.items() if k in MODEL}}
    tokenizer = {**TOKENIZER, **{k: v for k, v in changes.items() if k in TOKENIZER}}
    train = {**TRAIN, **{k: v for k, v in changes.items() if k not in MODEL and k not in TOKENIZER}}
    tcfg = TrainConfig(**{"seed": seed, **train, **({"max_steps": steps} if steps else {})})  # a change may set the seed
    t0 = time.perf_counter()
    res = pretrain(adatas, out_dir=run_dir, model_config=model, tokenizer_config=TokenizerConfig(**tokenizer),
                   train_config=tcfg, vocab=vocab, resume=resume)
    info_path = run_dir / "build_info.json"
    info = json.loads(info_path.read_text()) if resume and info_path.is_file() else {"sittings": []}
    info["sittings"].append({"wall_minutes": round((time.perf_counter() - t0) / 60, 1), "resumed": resume,
                             "threads": torch.get_num_threads()})
    info.update({"n_union_genes": n_union, "n_vocab_genes": len(vocab.genes), "steps": tcfg.max_steps,
                 "seed": tcfg.seed, "n_train_cells": res.n_train_cells, "n_val_cells": res.n_val_cells,
                 "val_start": res.val_start, "val_end": res.val_end})
    info_path.write_text(json.dumps(info, indent=2))
    return res


def export(run_dir: Path, dest: Path) -> Path:
    """Write the run's model to ``dest`` with floating-point tensors in fp16 (the package copy)."""
    from safetensors.torch import load_file, save_file

    from .. import __version__

    dest.mkdir(parents=True, exist_ok=True)
    state = load_file(str(run_dir / "model.safetensors"))
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    tmp = dest / "model.safetensors.tmp"
    save_file(half, str(tmp), metadata={"scmamba2_version": __version__, "dtype": "float16"})
    tmp.replace(dest / "model.safetensors")
    for f in ("config.json", "vocab.json"):
        (dest / f).write_text((run_dir / f).read_text())
    return dest


def check_cells(model, n_cells: int = 4, seed: int = 0):
    """A few deterministic cells over the model's panel genes (counts), to record and re-check an embedding."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    genes = [model.vocab.tokens[i] for i in model.profile_head.gene_ids.tolist()[:200]]
    rng = np.random.default_rng(seed)
    X = rng.poisson(rng.gamma(0.3, 3.0, size=(n_cells, len(genes)))).astype(np.float32)
    X[:, 0] += 1
    return ad.AnnData(sp.csr_matrix(X), var=pd.DataFrame(index=genes))


def record_reference(dest: Path) -> None:
    """Write ``reference_embedding.json``: the check cells' counts and their embedding by the exported model."""
    from ..model import ScMamba2
    from ..tasks.embed import embed

    model = ScMamba2.from_pretrained(dest).eval()
    a = check_cells(model)
    embed(a, model, progress=False)
    ref = {"genes": list(map(str, a.var_names)), "counts": a.X.toarray().astype(int).tolist(),
           "embedding": np.round(a.obsm["X_scmamba2"].astype(np.float64), 6).tolist()}
    (dest / "reference_embedding.json").write_text(json.dumps(ref))


def zero_shot_scores(models: dict, data_dir: Path, seed: int = 0):
    """kNN accuracy / macro-F1 and scIB bio of each zero-shot embedding (label -> embed's ``model`` argument: a
    checkpoint folder, a list of them side by side, or None for embed's default) next to PCA-50 (fitted on the
    evaluation cells themselves), on pbmc3k's QC cells and on Kang's held-out donors."""
    import pandas as pd

    from ..tasks.embed import embed, embedding_models, vocabulary_genes
    from ..eval.knn import knn_label_transfer_scores as knn_scores
    from ..eval.scib import bio_conservation
    from .representation import load_kang, load_pbmc3k, pbmc3k_qc_cells, pca_train_eval

    nets = {label: embedding_models(m)[1] for label, m in models.items()}
    genes = vocabulary_genes([n for ms in nets.values() for n in ms])
    rows = []
    for name, loader in (("pbmc3k (2,638 QC cells, all genes)", "pbmc3k"), ("Kang held-out donors", "kang")):
        if loader == "pbmc3k":
            evaluate = pbmc3k_qc_cells(data_dir)
            pca_fit = load_pbmc3k(data_dir)[0]  # the scanpy recipe: 2,000 HVGs of the same cells
            pca_eval = pca_fit
        else:
            evaluate = load_kang(data_dir)[1]
            pca_fit = pca_eval = evaluate  # PCA fitted on the held-out cells themselves
        labels = evaluate.obs["cell_type"].astype(str).to_numpy()
        e = evaluate[:, evaluate.var_names.isin(genes)].copy()
        embeddings = {}
        for label, ms in nets.items():
            embed(e, ms, progress=False)
            embeddings[label] = e.obsm["X_scmamba2"]
        embeddings["PCA-50 fitted on these cells"] = pca_train_eval(pca_fit, pca_eval, seed=seed)
        for method, X in embeddings.items():
            rows.append({"data": name, "embedding": method, **knn_scores(X, labels, seed),
                         **bio_conservation(X, labels, seed)})
    return pd.DataFrame(rows)


def _threads(info) -> str:
    return "/".join(sorted({str(s.get("threads", 1)) for s in info["sittings"]}))


def write_card(dest: Path, run_dir: Path, scores) -> Path:
    """``MODEL_CARD.md``: data, cells, genes, steps, wall time, seed, rebuild command, zero-shot scores."""
    import pandas as pd

    from ..model import ScMamba2
    from .representation import KANG_HELDOUT
    from .result import markdown_table

    info = json.loads((run_dir / "build_info.json").read_text())
    pool = pd.read_csv(run_dir / "pool.csv")
    model = ScMamba2.from_pretrained(dest)
    n_params = sum(p.numel() for p in model.parameters())
    size_mb = (dest / "model.safetensors").stat().st_size / 2**20
    minutes = sum(s["wall_minutes"] for s in info["sittings"])
    end = info.get("val_end") or {}
    lines = [
        f"# {dest.name}", "",
        "A small SC-MAMBA2 model pretrained on CPU, shipped with scmamba2 so that `scmamba2 embed DATA --out OUT` "
        "works without a model of your own. It is a demonstration-scale model, not a foundation model: read the "
        "scores below before relying on it.", "",
        "The package ships two builds of this recipe, differing only in their seed: "
        f"{' and '.join(f'`{n}`' for n in DEFAULT_EMBEDDING)}. "
        "`embed` without a model reads cells with both and puts their embeddings side by side (width "
        f"{len(DEFAULT_EMBEDDING)} x {MODEL['d_model']}): on the readout benchmark's selection sets every pair of "
        "builds measured better than either build alone (`benchmarks/results/ensemble_seeds.md`). `annotate`'s "
        "linear probe reads both side by side too (`benchmarks/results/annotate_pair.md`); the other tasks "
        "(`integrate`, `multiomics`, `transfer_modality`, `pretrain --init-model bundled`, `annotate --method "
        f"finetune`) start from `{NAME}` alone.", "",
        "## Recipe", "",
        f"- Architecture: `{json.dumps(MODEL)}`, {n_params:,} parameters ({size_mb:.1f} MB as fp16 safetensors).",
        "- Readout: mean over the encoder outputs of all tokens. Objective: the whole-profile decoder "
        f"(a linear map from the cell embedding to the standardised log-normalised expression of "
        f"{model.config.profile_genes:,} panel genes, zeros included; a panel gene that a file did not measure "
        f"is no target for that file's cells); GEP and MVC off.",
        f"- Panel: the {model.config.profile_genes:,} genes of highest normalised dispersion (scanpy's `seurat` rule on "
        "the log-normalised values; it keeps markers of rare types such as PPBP, PF4, FCER1A, CD1C, MS4A1) among genes "
        "measured in at least 15 % of the pooled cells. It replaced the 1,287 most variable genes measured in half "
        "of the cells (in effect Kang's 1,287-gene panel), on the selection sets of `benchmarks/results/readout.md`: "
        "kNN macro-F1 0.769 vs 0.771 on Kang's training donors and 0.930 vs 0.915 on ifnb1k (accuracy 0.921 vs "
        "0.925, 0.951 vs 0.945).",
        "- Inference (`embed`'s defaults): every expressed gene of a cell is read, and the embedding is returned "
        "in the metric of the profile decoder (distances between cells = distances between their decoded "
        "profiles); chosen on cells the model was trained on, see `benchmarks/results/readout.md`.",
        f"- Tokens: `{json.dumps(TOKENIZER)}` (expressed genes, a random subset of at most "
        f"{TOKENIZER['max_len'] - 1} re-drawn each epoch).",
        f"- Training: `{json.dumps({k: v for k, v in TRAIN.items() if k != 'max_steps'})}`, {info['steps']} steps, "
        f"seed {info['seed']}, {minutes:.0f} min wall time on a shared 2-core CPU "
        f"({len(info['sittings'])} sitting(s), {_threads(info)} torch thread(s)).",
        "- Depth thinning (`depth_thinning`): each epoch, half of the training cells are read as if sequenced "
        "less deeply (their counts thinned binomially to a fraction drawn from [0.2, 1), the profile target "
        "unchanged). It replaced the same recipe without thinning on the selection sets: mean kNN macro-F1 "
        "0.855-0.859 over three builds vs 0.850 over two (`benchmarks/results/bundled_ablation.md`).",
        f"- Vocabulary: {info['n_vocab_genes']:,} genes (detected in >= {MIN_CELLS} pooled cells, of "
        f"{info['n_union_genes']:,} in the union).", "",
        "## Data", "",
        f"{info['n_train_cells']:,} training and {info['n_val_cells']:,} held-out cells from the public files "
        "below (`../shared/data`, see its MANIFEST.md for sources and licences). Left out: every pbmc3k cell, and "
        "the cells of Kang donors " + ", ".join(KANG_HELDOUT) + " in every Kang file (matched by barcode and condition), so that both zero-shot tests below use cells "
        "the model never saw.", "",
        markdown_table(pool), "",
        "## Held-out loss", "",
        f"Profile MSE (standardised units) on the held-out cells: {info['val_start'].get('val/profile', float('nan')):.3f} "
        f"before training, {end.get('val/profile', float('nan')):.3f} after; predicting each gene's mean scores "
        f"{end.get('val/profile_gene_mean', float('nan')):.3f}.", "",
        "## Zero-shot scores", "",
        "5-fold kNN (k=15) label transfer of `cell_type` and the batch-free scIB bio-conservation metrics, next to "
        "PCA-50 fitted on the very cells it embeds (the scanpy recipe; for pbmc3k on its 2,000 HVGs): this build "
        "alone and, where every build is in the package, embed's default (the builds side by side). One kNN fold "
        "seed: `benchmarks/results/ensemble_seeds.md` averages ten.", "",
        markdown_table(scores), "",
        "## Rebuild", "",
        "```bash",
        f".venv/bin/python scripts/build_pretrained.py --name {dest.name} --steps {info['steps']} "
        f"--seed {info['seed']} "
        f"--threads {_threads(info)}"
        "   # add --resume to continue an interrupted run",
        "```", "",
        f"The build needs `../shared/data`; it writes the run to `out/{dest.name}/` and this folder from it.",
    ]
    path = dest / "MODEL_CARD.md"
    path.write_text("\n".join(lines) + "\n")
    return path

