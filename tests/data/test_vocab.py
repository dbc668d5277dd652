"""GeneVocab: ids, lookup, union over datasets, JSON persistence."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scmamba2._keys import SPECIAL_TOKENS
from scmamba2.data.vocab import GeneVocab
from scmamba2.errors import InputError


def _adata(genes):
    return ad.AnnData(X=sp.csr_matrix((2, len(genes)), dtype=np.float32), var=pd.DataFrame(index=genes))


def test_specials_first_then_genes():
    vocab = GeneVocab(["A", "B", "C"])
    assert vocab.tokens == [*SPECIAL_TOKENS, "A", "B", "C"]
    assert vocab.genes == ["A", "B", "C"]
    assert (vocab.pad_id, vocab.cls_id, vocab.eoc_id, vocab.mask_id) == (0, 1, 2, 3)
    assert len(vocab) == 7
    assert vocab["A"] == 4 and vocab["C"] == 6
    assert "B" in vocab and "Z" not in vocab
    with pytest.raises(KeyError):
        vocab["Z"]


def test_duplicates_and_reserved_names_rejected():
    with pytest.raises(InputError, match="duplicated"):
        GeneVocab(["A", "B", "A"])
    with pytest.raises(InputError, match="reserved"):
        GeneVocab(["A", "<pad>"])


def test_lookup_vectorised_unknown_is_minus_one():
    vocab = GeneVocab(["A", "B", "C"])
    ids = vocab.lookup(["C", "nope", "A", "C"])
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, [6, -1, 4, 6])
    np.testing.assert_array_equal(vocab.lookup(pd.Index(["B"])), [5])
    np.testing.assert_array_equal(vocab.lookup(np.array(["x", "B"])), [-1, 5])
    np.testing.assert_array_equal(vocab.lookup(g for g in ["A"]), [4])
    assert vocab.lookup([]).shape == (0,)


def test_lookup_matches_case_only_where_the_names_otherwise_agree(caplog):
    vocab = GeneVocab(["CD3E", "MS4A1", "C1orf159", "Abc", "ABC", "Xyz"])
    # An upper-cased file (as pbmc_10k_protein_v3 stores its symbols): C1ORF159 is C1orf159.
    with caplog.at_level("INFO", logger="scmamba2"):
        np.testing.assert_array_equal(vocab.lookup(["CD3E", "MS4A1", "C1ORF159"]), [4, 5, 6])
    assert "C1ORF159" in caplog.text and "case is ignored" in caplog.text
    # Two tokens spelt 'ABC' ignoring case: an ambiguous name stays unmatched; an exact one wins.
    np.testing.assert_array_equal(vocab.lookup(["CD3E", "MS4A1", "abc", "ABC"]), [4, 5, -1, 8])
    # A token that another name matches exactly is not taken twice.
    np.testing.assert_array_equal(vocab.lookup(["CD3E", "Xyz", "XYZ"]), [4, 9, -1])
    # Mostly unmatched names (another species or identifier): no case folding at all.
    np.testing.assert_array_equal(vocab.lookup(["Cd3e", "Ms4a1", "CD3E"]), [-1, -1, 4])
    # Special tokens are never matched ignoring case.
    np.testing.assert_array_equal(vocab.lookup(["CD3E", "<CLS>"]), [4, -1])


def test_case_matching_in_a_loaded_vocabulary_with_special_tokens_last(tmp_path):
    path = tmp_path / "vocab.json"
    tokens = ["C1orf159", "CD3E", "MS4A1", *SPECIAL_TOKENS]  # scGPT files may put the special tokens anywhere
    path.write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    vocab = GeneVocab.load(path)
    np.testing.assert_array_equal(vocab.lookup(["CD3E", "MS4A1", "C1ORF159", "<PAD>"]), [1, 2, 0, -1])


def test_from_adata_union_first_seen_order():
    a, b = _adata(["G1", "G2", "G3"]), _adata(["G3", "G0", "G1", "G9"])
    vocab = GeneVocab.from_adata([a, b])
    assert vocab.genes == ["G1", "G2", "G3", "G0", "G9"]
    assert GeneVocab.from_adata(a).genes == ["G1", "G2", "G3"]


def test_json_round_trip(tmp_path):
    vocab = GeneVocab(["A", "B", "ÄÖ"])
    path = tmp_path / "sub" / "vocab.json"
    vocab.save(path)
    mapping = json.loads(path.read_text(encoding="utf-8"))
    assert mapping == {t: i for i, t in enumerate(vocab.tokens)}  # plain {token: id}
    loaded = GeneVocab.load(path)
    assert loaded == vocab
    np.testing.assert_array_equal(loaded.lookup(["B", "?"]), [5, -1])
    assert vocab != GeneVocab(["A", "B"])


def test_load_scgpt_style_keeps_file_ids(tmp_path):
    # scGPT puts genes first and its special tokens at the end.
    mapping = {"A": 0, "B": 1, "<pad>": 2, "<cls>": 3, "<eoc>": 4, "<mask>": 5}
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(mapping))
    vocab = GeneVocab.load(path)
    assert (vocab.pad_id, vocab.cls_id, vocab.eoc_id, vocab.mask_id) == (2, 3, 4, 5)
    assert vocab["B"] == 1 and vocab.genes == ["A", "B"]
    assert vocab.to_dict() == mapping


def test_load_missing_specials(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"A": 0, "<pad>": 1, "B": 2, "<cls>": 3, "<eoc>": 4}))
    with pytest.raises(InputError, match="<mask>"):
        GeneVocab.load(path)
    vocab = GeneVocab.load(path, add_missing_specials=True)
    assert vocab.mask_id == 5 and vocab.pad_id == 1 and len(vocab) == 6


def test_load_rejects_bad_files(tmp_path):
    gaps = tmp_path / "gaps.json"
    gaps.write_text(json.dumps({"<pad>": 0, "<cls>": 1, "<eoc>": 2, "<mask>": 3, "A": 7}))
    with pytest.raises(InputError, match="gaps"):
        GeneVocab.load(gaps)
    notdict = tmp_path / "list.json"
    notdict.write_text("[1, 2]")
    with pytest.raises(InputError):
        GeneVocab.load(notdict)
    with pytest.raises(InputError):
        GeneVocab.load(tmp_path / "missing.json")


def test_lookup_of_the_same_index_is_computed_once_and_not_shared():
    import numpy as np
    import pandas as pd

    from scmamba2.data.vocab import GeneVocab

    vocab = GeneVocab(["A", "B", "C"])
    names = pd.Index(["C", "X", "A"])
    calls = []

    real = vocab._index

    class Wrapped:
        def get_indexer(self, target):
            calls.append(1)
            return real.get_indexer(target)

    vocab._index = Wrapped()
    c_id, a_id = int(real.get_loc("C")), int(real.get_loc("A"))
    first = vocab.lookup(names)
    first[:] = -7  # a caller changing its result does not change the next one
    second = vocab.lookup(names)
    np.testing.assert_array_equal(second, [c_id, -1, a_id])
    assert len(calls) == 1
    vocab.lookup(pd.Index(["C", "X", "A"]))  # an equal but different Index: looked up again
    assert len(calls) == 2
