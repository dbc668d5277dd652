"""Multi-omics input: MuData / AnnData+obsm reading, CLR, peak selection, the modality spec, joint tokens and the
cross-modal masking collator."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from scmamba2._keys import GENES, MASK, MASK_VALUE, MODALITY, PADDING_MASK, VALUES
from scmamba2.data.collate import TokenizedDataset
from scmamba2.data.multiomics import (ModalitySpec, MultiomicCollator, clr, joint_cells, modality_values,
                                      read_multiomics, to_container, top_variable_peaks)
from scmamba2.data.tokenize import TokenizerConfig, tokenize
from scmamba2.data.vocab import GeneVocab
from scmamba2.errors import CheckpointError, InputError


def paired(n=40, g=30, p=5, k=20, seed=0):
    """RNA, protein and ATAC AnnData objects of the same n cells (raw counts)."""
    rng = np.random.default_rng(seed)
    names = [f"cell{i}" for i in range(n)]
    rna = ad.AnnData(sp.csr_matrix(rng.poisson(2.0, (n, g)).astype(np.float32)),
                     obs=pd.DataFrame({"batch": rng.choice(["a", "b"], n)}, index=names),
                     var=pd.DataFrame(index=[f"G{j}" for j in range(g)]))
    prot = ad.AnnData(rng.poisson(30.0, (n, p)).astype(np.float32), obs=pd.DataFrame(index=names),
                      var=pd.DataFrame(index=[f"CD{j}" for j in range(p)]))
    atac = ad.AnnData(sp.csr_matrix(rng.poisson(0.3, (n, k)).astype(np.float32)), obs=pd.DataFrame(index=names),
                      var=pd.DataFrame(index=[f"chr1-{100 * j}-{100 * j + 50}" for j in range(k)]))
    return rna, prot, atac


def test_mudata_round_trip_keeps_every_modality_and_cell(tmp_path):
    import mudata

    rna, prot, atac = paired()
    hto = ad.AnnData(np.ones((rna.n_obs, 2), np.float32), obs=pd.DataFrame(index=rna.obs_names))
    path = tmp_path / "m.h5mu"
    mudata.MuData({"rna": rna, "adt": prot, "atac": atac, "hto": hto}).write(str(path))
    md = read_multiomics(path)
    assert list(md.mods) == ["rna", "prot", "atac"]  # adt -> prot; hto is not a modality we read
    for name, src in (("rna", rna), ("prot", prot), ("atac", atac)):
        assert list(md.mods[name].obs_names) == list(rna.obs_names)
        X = md.mods[name].X
        np.testing.assert_array_equal(X.toarray() if sp.issparse(X) else X,
                                      src.X.toarray() if sp.issparse(src.X) else src.X)
    md.container.obsm["X_test"] = np.arange(md.container.n_obs, dtype=np.float32)[:, None]
    out = tmp_path / "out.h5mu"
    to_container(md, out).write(str(out))
    back = mudata.read_h5mu(str(out))
    assert set(back.mod) == {"rna", "adt", "atac", "hto"} and back.n_obs == rna.n_obs
    assert list(back.mod["atac"].obs_names) == list(rna.obs_names)
    np.testing.assert_array_equal(back.obsm["X_test"][:, 0], np.arange(rna.n_obs))


def test_mudata_cells_missing_a_modality_are_left_out():
    import mudata

    rna, prot, atac = paired()
    md = read_multiomics(mudata.MuData({"rna": rna, "prot": prot[5:].copy()}))
    assert md.n_obs == rna.n_obs - 5 and list(md.mods["prot"].obs_names) == list(rna.obs_names[5:])
    assert list(md.rows) == list(range(5, rna.n_obs))


def test_anndata_with_protein_in_obsm():
    rna, prot, _ = paired()
    a = rna.copy()
    a.obsm["protein_expression"] = prot.X.copy()
    a.uns["protein_names"] = np.asarray(prot.var_names)
    a.obsm["hto_counts"] = np.ones((a.n_obs, 3))
    md = read_multiomics(a)
    assert list(md.mods) == ["rna", "prot"] and list(md.mods["prot"].var_names) == list(prot.var_names)
    b = rna.copy()
    b.obsm["protein_counts"] = pd.DataFrame(prot.X, index=b.obs_names, columns=["x", "y", "z", "u", "v"])
    assert list(read_multiomics(b).mods["prot"].var_names) == ["x", "y", "z", "u", "v"]
    mu = read_multiomics(a).as_mudata()
    assert set(mu.mod) == {"rna", "prot"} and "protein_expression" not in mu.obsm
    # integer counts stay integer counts in the protein modality (a .h5mu output writes them back as given)
    c = rna.copy()
    c.obsm["protein_expression"] = prot.X.astype(np.int64)
    c.uns["protein_names"] = np.asarray(prot.var_names)
    X = read_multiomics(c).as_mudata().mod["prot"].X
    assert X.dtype == np.int64 and np.array_equal(X, c.obsm["protein_expression"])
    assert X is not c.obsm["protein_expression"]


def test_bad_inputs_name_the_problem():
    import mudata

    rna, prot, atac = paired()
    with pytest.raises(InputError, match="obsm keys"):
        read_multiomics(rna)
    with pytest.raises(InputError, match=r"has 'rna' \(30 features\), 'hto'"):
        read_multiomics(mudata.MuData({"rna": rna, "hto": prot}))
    a = rna.copy()
    a.obsm["protein_expression"] = prot.X.copy()
    with pytest.raises(InputError, match="protein_names"):
        read_multiomics(a)
    for bad, what in ((-1.0, "negative"), (np.nan, "NaN")):
        p = prot.copy()
        p.X[0, 0] = bad
        with pytest.raises(InputError, match=what):
            read_multiomics(mudata.MuData({"rna": rna, "prot": p}))


def test_clr_is_seurat_per_cell_and_monotone():
    x = np.array([[0, 1, 10, 100], [5, 5, 5, 5]], dtype=np.float32)
    expected = np.log1p(x / np.exp(np.log1p(x).mean(1, keepdims=True)))
    np.testing.assert_allclose(clr(x), expected, rtol=1e-6)
    c = clr(x)
    assert c[0, 0] == 0 and (c >= 0).all() and (np.diff(c[0]) > 0).all()
    tok = TokenizerConfig(n_bins=5, value_mode="binned")
    np.testing.assert_array_equal(modality_values("prot", x, tok)[0], [0, 1, 2, 4])


def test_top_variable_peaks_prefers_half_open():
    X = np.zeros((10, 4), np.float32)
    X[:1, 0] = 1  # open in 10% of cells
    X[:5, 1] = 3  # 50%: most variable after binarising
    X[:, 2] = 1  # always open: no variance
    X[:3, 3] = 1  # 30%
    assert list(top_variable_peaks(sp.csr_matrix(X), 2)) == [1, 3]
    np.testing.assert_array_equal(modality_values("atac", X, TokenizerConfig())[:, 1], [1] * 5 + [0] * 5)


def _spec_vocab():
    spec = ModalitySpec(["rna", "prot", "atac"], {"prot": ["CD3", "CD4"], "atac": ["chr1-1-2"]})
    return spec, spec.extend(GeneVocab(["CD3", "MS4A1", "CD4"]))


def test_spec_tokens_are_prefixed_appended_and_checked():
    spec, vocab = _spec_vocab()
    assert vocab.tokens[-3:] == ["prot:CD3", "prot:CD4", "atac:chr1-1-2"]
    assert vocab["CD3"] != vocab["prot:CD3"]  # the gene and its protein are different tokens
    table = spec.modality_of(vocab)
    assert table[vocab["CD3"]] == 0 and table[vocab["prot:CD4"]] == 1 and table[vocab["atac:chr1-1-2"]] == 2
    assert ModalitySpec.from_dict(spec.to_dict()) == spec
    spec.check(vocab, 3)
    with pytest.raises(CheckpointError, match="modality embeddings"):
        spec.check(vocab, 2)
    with pytest.raises(CheckpointError, match="not in vocab.json"):
        spec.check(GeneVocab(["CD3", "prot:CD3"]), 3)


def _joint(rna_max_len=3):
    spec, vocab = _spec_vocab()
    X = np.array([[5, 1, 3], [0, 2, 0]], dtype=np.float32)
    rna = tokenize(X, vocab, TokenizerConfig(value_mode="continuous"), gene_names=["CD3", "MS4A1", "CD4"])
    others = {"prot": np.array([[0.5, 1.5], [MASK_VALUE, MASK_VALUE]], np.float32), "atac": np.ones((2, 1), np.float32)}
    return spec, vocab, joint_cells(rna, others, spec, vocab, rna_max_len)


def test_joint_cells_concatenate_modalities_and_cap_rna():
    spec, vocab, cells = _joint(rna_max_len=2)
    genes, values = cells.cell(0)
    # <cls>, the two highest RNA values (CD3 = 5, CD4 = 3) in stored order, then prot, then atac
    assert [vocab.tokens[g] for g in genes] == ["<cls>", "CD3", "CD4", "prot:CD3", "prot:CD4", "atac:chr1-1-2"]
    np.testing.assert_allclose(values[-3:], [0.5, 1.5, 1.0])
    genes1, values1 = cells.cell(1)
    assert [vocab.tokens[g] for g in genes1][:2] == ["<cls>", "MS4A1"] and (values1[2:4] == MASK_VALUE).all()
    assert cells.config.max_len >= cells.lengths.max()


def test_collator_modality_ids_and_cross_modal_masking():
    spec, vocab, cells = _joint()
    items = [TokenizedDataset(cells)[i] for i in range(2)]
    table = spec.modality_of(vocab)
    b = MultiomicCollator(vocab.pad_id, table, mask_ratio=0.3, cross_modal_prob=1.0, seed=0)(items)
    valid = ~b[PADDING_MASK]
    np.testing.assert_array_equal(b[MODALITY][valid].numpy(), table[b[GENES][valid].numpy()])
    other = (b[MODALITY] > 0) & valid
    assert bool(b[MASK][other].all()) and not bool(b[MASK][(b[MODALITY] == 0)].any())  # RNA all visible
    assert bool((b[VALUES][other] == MASK_VALUE).all())
    c1 = MultiomicCollator(vocab.pad_id, table, mask_ratio=0.5, cross_modal_prob=0.5, seed=3)(items)
    c2 = MultiomicCollator(vocab.pad_id, table, mask_ratio=0.5, cross_modal_prob=0.5, seed=3)(items)
    assert torch.equal(c1[MASK], c2[MASK]) and torch.equal(c1[VALUES], c2[VALUES])


def test_real_multiome_and_cite_files(shared_data):
    md = read_multiomics(shared_data / "test_rna_atac.h5mu")
    assert list(md.mods) == ["rna", "atac"] and md.n_obs == 1000 and md.mods["atac"].n_vars == 174
    cite = read_multiomics(shared_data / "pbmc_5k_protein_v3.h5ad")
    assert cite.mods["prot"].n_vars == 29 and cite.mods["prot"].var_names[0] == "CD3_TotalSeqB"
    eccite = read_multiomics(shared_data / "citefuse_eccite_pbmc500.h5ad")  # obsm['protein_counts'], not HTOs
    assert eccite.mods["prot"].n_vars == 49
