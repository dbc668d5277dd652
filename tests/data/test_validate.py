"""Tests for scmamba2.data.validate: value kinds, fatal problems, warnings, gene names and vocabulary overlap."""

import numpy as np
import pytest
import scipy.sparse as sp

from scmamba2.data.validate import ValidationReport, strip_gene_prefix, validate
from scmamba2.errors import InputError


def _with_x(adata, x, var_names=None):
    import anndata as ad

    out = ad.AnnData(X=x, obs=adata.obs.copy(), var=adata.var.copy())
    if var_names is not None:
        out.var_names = var_names
    return out


def _log_normalized(adata):
    import scanpy as sc

    a = adata.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return a


class TinyVocab:
    """Only __contains__ and __len__, like the minimum the validator may rely on (not iterable)."""

    def __init__(self, genes):
        self._genes = set(genes)

    def __contains__(self, gene):
        return gene in self._genes

    def __len__(self):
        return len(self._genes)


@pytest.mark.parametrize("fmt", ["csr", "csc", "dense"])
def test_raw_counts_ok(tiny_counts, fmt):
    x = tiny_counts.X
    x = x.toarray() if fmt == "dense" else x.asformat(fmt)
    report = validate(_with_x(tiny_counts, x))
    assert isinstance(report, ValidationReport)
    assert report.ok and report.errors == []
    assert report.value_kind == "raw_counts"
    assert (report.n_cells, report.n_genes) == (64, 50)
    assert not report.has_nan and not report.has_inf and report.n_negative == 0
    assert report.gene_id_kind == "symbol" and report.gene_prefix is None and report.vocab_overlap is None
    d = report.to_dict()
    assert d["ok"] is True and d["value_kind"] == "raw_counts"
    text = str(report)
    assert "raw_counts" in text and "64 x 50" in text and text == report.summary() and "\n" in text


def test_log_normalized_accepted_with_rank_warning(tiny_counts):
    report = validate(_log_normalized(tiny_counts), purpose="pretrain")
    assert report.ok
    assert report.value_kind == "log_normalized"
    assert any("rank" in w and "same" in w for w in report.warnings)


def test_log_without_constant_totals_is_still_log(tiny_counts):
    a = tiny_counts.copy()
    a.X = a.X.copy()
    a.X.data = np.log2(a.X.data / 3.0 + 1)  # log of size-factor normalised counts (totals not constant)
    assert validate(a).value_kind == "log_normalized"


def test_normalized_not_log(tiny_counts):
    import scanpy as sc

    a = tiny_counts.copy()
    sc.pp.normalize_total(a, target_sum=1e6)
    report = validate(a)
    assert report.ok and report.value_kind == "normalized"
    assert any("not log-transformed" in w for w in report.warnings)


def test_normalized_to_small_total_is_not_log(tiny_counts):
    import scanpy as sc

    a = tiny_counts.copy()
    sc.pp.normalize_total(a, target_sum=1.0)  # fractions: max < 20, but per-cell totals are constant
    assert validate(a).value_kind == "normalized"


def test_scaled_is_error_pointing_to_raw_and_layers(tiny_counts):
    import scanpy as sc

    a = _log_normalized(tiny_counts)
    a.layers["counts"] = tiny_counts.X.copy()
    a.X = a.X.toarray()
    sc.pp.scale(a)
    with pytest.raises(InputError) as info:
        validate(a)
    msg = str(info.value)
    assert "raw" in msg and "layer" in msg and "'counts'" in msg and "--layer counts" in msg
    assert "\n" not in msg
    assert info.value.report.value_kind == "scaled" and info.value.report.n_negative > 0


def test_scaled_without_alternatives(tiny_counts):
    x = tiny_counts.X.toarray()
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    report = validate(_with_x(tiny_counts, x), raise_on_error=False)
    assert not report.ok and report.value_kind == "scaled"
    assert "no layers and no .raw" in report.error_message()


@pytest.mark.parametrize(("bad", "field"), [(np.nan, "has_nan"), (np.inf, "has_inf")])
def test_nan_inf_error(tiny_counts, bad, field):
    a = tiny_counts.copy()
    a.X = a.X.copy()
    a.X.data[3] = bad
    with pytest.raises(InputError, match="NaN"):
        validate(a)
    report = validate(a, raise_on_error=False)
    assert getattr(report, field) and not report.ok
    assert report.value_kind == "raw_counts"  # the other values are still counts


def test_empty_cells_warning_with_count(tiny_counts):
    x = tiny_counts.X.toarray()
    x[[1, 5, 9]] = 0
    x = sp.csr_matrix(x)
    x[2, 0] = 0  # an explicit zero is not an expression: cell 2 keeps its other genes
    report = validate(_with_x(tiny_counts, x))
    assert report.ok and report.n_empty_cells == 3
    warn = [w for w in report.warnings if "no non-zero value" in w]
    assert warn and "3 of 64" in warn[0] and "sc.pp.filter_cells(adata, min_genes=1)" in warn[0]


def test_explicit_zeros_count_as_empty(tiny_counts):
    x = tiny_counts.X.copy()
    x.data[x.indptr[0] : x.indptr[1]] = 0  # cell 0 keeps stored entries, all zero
    report = validate(_with_x(tiny_counts, x))
    assert report.n_empty_cells == 1


def test_all_empty_and_no_cells_are_errors(tiny_counts):
    with pytest.raises(InputError, match="all 64 cells are empty"):
        validate(_with_x(tiny_counts, sp.csr_matrix((64, 50), dtype=np.float32)))
    with pytest.raises(InputError, match="0 cells"):
        validate(tiny_counts[:0].copy())
    no_genes = validate(tiny_counts[:, :0].copy(), raise_on_error=False)
    assert no_genes.errors == [no_genes.errors[0]] and "0 genes" in no_genes.errors[0]  # one clear error, no more


def test_empty_genes_warning(tiny_counts):
    x = tiny_counts.X.toarray()
    x[:, [3, 4]] = 0
    report = validate(_with_x(tiny_counts, x))
    assert report.n_empty_genes == 2 and any("2 of 50 genes" in w for w in report.warnings)


def test_duplicate_genes(tiny_counts):
    names = list(tiny_counts.var_names)
    names[7] = names[3] = "DUP"
    a = _with_x(tiny_counts, tiny_counts.X, var_names=names)
    report = validate(a)
    assert report.ok and report.duplicate_genes == ["DUP"] and report.n_duplicate_genes == 1
    assert any("var_names_make_unique()" in w for w in report.warnings)


def test_prefix_detected_and_stripped_for_overlap(tiny_counts):
    plain = list(tiny_counts.var_names)
    a = _with_x(tiny_counts, tiny_counts.X, var_names=[f"hg19_{g}" for g in plain])
    report = validate(a, vocab=set(plain))
    assert report.gene_prefix == "hg19_"
    assert report.vocab_overlap == 1.0 and report.ok
    assert any("hg19_" in w for w in report.warnings)
    assert "hg19_" in report.summary()


def test_strip_gene_prefix():
    assert strip_gene_prefix(["hg19_CD3E", "hg19_MS4A1", "RP11-1"]) == (["CD3E", "MS4A1", "RP11-1"], "hg19_")
    assert strip_gene_prefix(["GRCh38_A1BG", "GRCh38_TP53"])[1] == "GRCh38_"
    assert strip_gene_prefix(["mm10___Xkr4", "mm10___Rp1"]) == (["Xkr4", "Rp1"], "mm10___")
    assert strip_gene_prefix(["gene_1", "gene_2", "gene_3"])[1] is None  # numbers only: not a genome prefix
    assert strip_gene_prefix(["hg19_CD3E", "CD4", "MS4A1"]) == (["hg19_CD3E", "CD4", "MS4A1"], None)
    assert strip_gene_prefix(["CD3E", "HLA-A", "RP11-206L10.2"])[1] is None
    assert strip_gene_prefix([]) == ([], None)


def test_ensembl_and_mixed_ids(tiny_counts):
    ens = [f"ENSG{j:011d}" for j in range(50)]
    assert validate(_with_x(tiny_counts, tiny_counts.X, var_names=ens)).gene_id_kind == "ensembl"
    mus = [f"ENSMUSG{j:011d}.{j % 3}" for j in range(50)]
    assert validate(_with_x(tiny_counts, tiny_counts.X, var_names=mus)).gene_id_kind == "ensembl"
    mixed = ens[:25] + list(tiny_counts.var_names[25:])
    report = validate(_with_x(tiny_counts, tiny_counts.X, var_names=mixed))
    assert report.gene_id_kind == "mixed" and any("mix" in w for w in report.warnings)


def test_vocab_mismatch_lists_examples(tiny_counts):
    a = _with_x(tiny_counts, tiny_counts.X, var_names=[f"ENSG{j:011d}" for j in range(50)])
    a.var["gene_name"] = ["CD3E", "MS4A1", "LYZ"] + list(tiny_counts.var_names)[3:]
    vocab = ["<pad>", "<cls>", "CD3E", "MS4A1", "LYZ", "NKG7", "GNLY", "PPBP"]
    with pytest.raises(InputError) as info:
        validate(a, vocab=vocab)
    msg = str(info.value)
    assert "ENSG00000000000" in msg and "0 of 50" in msg
    assert "CD3E" in msg and "<pad>" not in msg and "PPBP" not in msg  # 5 vocab examples, specials skipped
    assert "var column 'gene_name' has 3 of the vocabulary's genes: pass --gene-column gene_name" in msg
    assert "\n" not in msg
    assert info.value.report.vocab_overlap == 0.0
    assert info.value.report.unmatched_examples == [f"ENSG{j:011d}" for j in range(5)]


def test_gene_column_advice_names_a_column_that_matches_better(tiny_counts):
    """Not a column equal to the names in use (e.g. the --gene-column given), nor one that matches no better."""
    from scmamba2.data.io import select_matrix

    ids = [f"ENSG{j:011d}" for j in range(50)]
    a = tiny_counts.copy()  # symbols as var_names, a model of Ensembl ids
    a.var["gene_symbol"] = list(a.var_names)  # the var_names again
    a.var["gene_ids"] = ids
    a.var["note"] = ["x"] * 50
    rep = validate(a, vocab=TinyVocab(ids[:40] + ["GENE0"]), raise_on_error=False)
    assert "pass --gene-column gene_ids" in rep.error_message() and "gene_symbol" not in rep.error_message()
    # The column in use (here gene_symbol, as after --gene-column gene_symbol): no advice to pass it again.
    b = tiny_counts.copy()
    b.var_names = ids
    b.var["gene_symbol"] = list(tiny_counts.var_names)
    msg = validate(select_matrix(b, gene_column="gene_symbol"), vocab=TinyVocab(["CD3E", "GENE0", "LYZ"]),
                   raise_on_error=False).error_message()
    assert "--gene-column" not in msg, msg


def test_vocab_overlap_threshold(tiny_counts):
    genes = list(tiny_counts.var_names)
    ok = validate(tiny_counts, vocab=TinyVocab(genes[:40]))  # 80%: fine, but says what is dropped
    assert ok.ok and ok.vocab_overlap == pytest.approx(0.8) and ok.n_vocab_matched == 40
    assert any("10 of 50 genes" in w for w in ok.warnings)
    other = [f"OTHER{i}" for i in range(30)]
    low = validate(tiny_counts, vocab=TinyVocab(genes[:10] + other), raise_on_error=False)  # 20% and 25% < 50%
    assert not low.ok and "20.0%" in low.error_message() and "25.0%" in low.error_message()
    assert "GENE10" in low.error_message()
    assert validate(tiny_counts, vocab=TinyVocab(genes[:10] + other), min_overlap=0.1).ok


def test_vocab_overlap_counts_the_model_side_too(tiny_counts):
    """A model built on 10 of the data's 50 genes (e.g. its HVGs) finds all of them: accepted (issue 17.5)."""
    genes = list(tiny_counts.var_names)
    rep = validate(tiny_counts, vocab=TinyVocab(genes[:10]))
    assert rep.ok and rep.vocab_overlap == pytest.approx(0.2) and rep.n_vocab_matched == 10


def test_several_errors_one_paragraph(tiny_counts):
    a = tiny_counts.copy()
    a.X = a.X.copy()
    a.X.data[0] = np.nan
    report = validate(a, vocab={"OTHER"}, raise_on_error=False)
    assert len(report.errors) == 2
    msg = report.error_message()
    assert "\n" not in msg and "(1) X contains 1 NaN" in msg and "(2) only 0 of 50 genes" in msg
    with pytest.raises(InputError) as info:
        validate(a, vocab={"OTHER"})
    assert str(info.value) == msg


def test_value_kind_uses_deterministic_sample():
    import anndata as ad

    rng = np.random.default_rng(1)
    x = sp.random(5000, 30, density=0.2, format="csr", random_state=2, dtype=np.float32)
    x.data = rng.integers(1, 50, x.data.size).astype(np.float32)
    a = ad.AnnData(X=x)
    r1, r2 = validate(a), validate(a)
    assert r1.n_sampled_cells == 2000 and r1.value_kind == "raw_counts"
    assert r1.to_dict() == r2.to_dict()
