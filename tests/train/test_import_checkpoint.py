"""Import of a release checkpoint (best_model.pt + args.json + vocab.json, scGPT-style names)."""

import json

import pytest
import torch

from scmamba2 import ModelConfig, ScMamba2
from scmamba2._keys import GENES, PADDING_MASK, VALUES
from scmamba2.data.vocab import GeneVocab
from scmamba2.errors import CheckpointError
from scmamba2.train.import_checkpoint import import_checkpoint

D, N_BINS, N_LAYERS = 32, 11, 2
MIXER = ["in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D", "norm.weight", "out_proj.weight"]


def reference_model():
    """Our model, with scGPT's vocabulary layout: genes first, <pad> <cls> <eoc> at the end, no <mask>."""
    genes = [f"G{i}" for i in range(20)]
    tokens = genes + ["<pad>", "<cls>", "<eoc>", "<mask>"]
    vocab = GeneVocab._from_tokens(tokens)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(vocab), d_model=D, n_layers=N_LAYERS, d_state=16, headdim=16, chunk_size=8,
                      n_bins=N_BINS, max_len=64, dropout=0.0, pad_id=vocab.pad_id)
    model = ScMamba2(cfg, vocab=vocab).eval()
    with torch.no_grad():  # make every tensor distinctive (norms start at ones/zeros)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model, tokens[:-1]  # the release's vocab.json lacks <mask>


def release_state(model, n_file_tokens):
    """The model's tensors under the release's names (category-style value encoder: pad row before mask row)."""
    s = model.state_dict()
    out = {"encoder.embedding.weight": s["gene_encoder.embedding.weight"][:n_file_tokens].clone(),
           "encoder.enc_norm.weight": s["gene_encoder.norm.weight"],
           "encoder.enc_norm.bias": s["gene_encoder.norm.bias"]}
    v = s["value_encoder.embedding.weight"]  # ours: bins, mask, pad
    out["value_encoder.embedding.weight"] = torch.cat([v[:N_BINS], v[N_BINS + 1:], v[N_BINS:N_BINS + 1]])
    out["value_encoder.enc_norm.weight"] = s["value_encoder.norm.weight"]
    out["value_encoder.enc_norm.bias"] = s["value_encoder.norm.bias"]
    for i in range(N_LAYERS):
        for name in MIXER:
            out[f"mamba_encoder.layers.{i}.mixer.{name}"] = s[f"encoder.layers.{i}.block.{name}"]
        out[f"mamba_encoder.layers.{i}.norm.weight"] = s[f"encoder.layers.{i}.norm.weight"]
    out["mamba_encoder.norm_f.weight"] = s["encoder.norm.weight"]
    for j in (0, 2, 4):
        for w in ("weight", "bias"):
            out[f"decoder.fc.{j}.{w}"] = s[f"expr_head.mlp.{j}.{w}"]
    out["mvc_decoder.gene2query.weight"] = s["mvc_head.gene_query.weight"]
    out["mvc_decoder.gene2query.bias"] = s["mvc_head.gene_query.bias"]
    out["mvc_decoder.W.weight"] = s["mvc_head.cell_proj.weight"]
    return {k: v.clone() for k, v in out.items()}


def write_release(folder, state, tokens, **args):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "best_model.pt")
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "args.json").write_text(json.dumps({"embsize": D, "n_bins": N_BINS, "max_seq_len": 64,
                                                  "dropout": 0.0, **args}))
    return folder


def batch(model):
    torch.manual_seed(1)
    genes = torch.randint(0, 20, (3, 12))
    genes[:, 0] = model.vocab.cls_id
    values = torch.randint(0, N_BINS, (3, 12)).float()
    values[0, 3] = -1.0  # masked
    pad = torch.zeros(3, 12, dtype=torch.bool)
    pad[2, 9:] = True
    genes[pad] = model.vocab.pad_id
    values[pad] = -2.0
    return {GENES: genes, VALUES: values, PADDING_MASK: pad}


def test_release_layout_round_trips_exactly(tmp_path):
    ref, file_tokens = reference_model()
    src = write_release(tmp_path / "release", release_state(ref, len(file_tokens)), file_tokens)
    model, report = import_checkpoint(src)
    assert report.added_tokens == ["<mask>"] and not report.not_mapped and not report.uninitialised
    assert model.vocab.tokens[: len(file_tokens)] == file_tokens
    assert model.config.d_state == 16 and model.config.headdim == 16 and model.config.n_layers == N_LAYERS
    theirs, mine = ref.state_dict(), model.state_dict()
    assert theirs.keys() == mine.keys()
    for k in theirs:  # every tensor identical (the appended <mask> row aside)
        n = len(file_tokens) if k == "gene_encoder.embedding.weight" else None
        assert torch.equal(theirs[k][:n], mine[k][:n]), k
    b = batch(ref)
    with torch.no_grad():
        want, got = ref.eval()(b), model.eval()(b)
    torch.testing.assert_close(got.states, want.states)  # same function (float summation order aside)
    torch.testing.assert_close(got.expr_pred, want.expr_pred)
    torch.testing.assert_close(got.mvc_pred, want.mvc_pred)
    model.save_pretrained(tmp_path / "ours")
    ScMamba2.from_pretrained(tmp_path / "ours")


def test_continuous_value_encoder_becomes_a_lookup_table(tmp_path):
    ref, file_tokens = reference_model()
    state = release_state(ref, len(file_tokens))
    del state["value_encoder.embedding.weight"]
    torch.manual_seed(2)
    w1, b1, w2, b2 = torch.randn(D, 1), torch.randn(D), torch.randn(D, D) * 0.2, torch.randn(D)
    state.update({"value_encoder.linear1.weight": w1, "value_encoder.linear1.bias": b1,
                  "value_encoder.linear2.weight": w2, "value_encoder.linear2.bias": b2})
    model, report = import_checkpoint(write_release(tmp_path / "r", state, file_tokens))
    assert "value_encoder.embedding.weight" in report.converted
    table = model.value_encoder.embedding.weight
    for x, row in [(0.0, 0), (7.0, 7), (-1.0, N_BINS), (-2.0, N_BINS + 1)]:  # a bin, mask (-1), pad (-2)
        expected = torch.relu(torch.tensor([x]) @ w1.T + b1) @ w2.T + b2
        torch.testing.assert_close(table[row], expected)


def test_every_tensor_that_does_not_fit_is_named(tmp_path):
    ref, file_tokens = reference_model()
    state = release_state(ref, len(file_tokens))
    state["cls_decoder._decoder.0.weight"] = torch.zeros(D, D)
    state["decoder.zero_logit.0.weight"] = torch.zeros(D, D)
    state["mamba_encoder.layers.1.mixer.in_proj.weight"] = torch.zeros(7, D)  # wrong shape
    state["transformer_encoder.layers.0.self_attn.in_proj_weight"] = torch.zeros(3 * D, D)
    src = write_release(tmp_path / "r", state, file_tokens)
    with pytest.raises(CheckpointError) as err:
        import_checkpoint(src)
    msg = str(err.value)
    for name in ("cls_decoder._decoder.0.weight", "decoder.zero_logit.0.weight",
                 "mamba_encoder.layers.1.mixer.in_proj.weight", "transformer_encoder.layers.0.self_attn",
                 "encoder.layers.1.block.in_proj.weight: no source", "allow_partial"):
        assert name in msg, name
    model, report = import_checkpoint(src, allow_partial=True)
    assert report.uninitialised == ["encoder.layers.1.block.in_proj.weight"]
    assert set(report.not_mapped) == {"cls_decoder._decoder.0.weight", "decoder.zero_logit.0.weight",
                                      "transformer_encoder.layers.0.self_attn.in_proj_weight"}
    assert torch.equal(model.state_dict()["encoder.layers.0.block.in_proj.weight"],
                       ref.state_dict()["encoder.layers.0.block.in_proj.weight"])


def test_vocab_and_embedding_must_agree(tmp_path):
    ref, file_tokens = reference_model()
    src = write_release(tmp_path / "r", release_state(ref, len(file_tokens)), file_tokens + ["EXTRA"])
    with pytest.raises(CheckpointError, match="vocab.json has 24 tokens but encoder.embedding.weight has 23 rows"):
        import_checkpoint(src)
    (src / "best_model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read .*best_model.pt"):
        import_checkpoint(src)
    with pytest.raises(CheckpointError, match="does not exist"):  # not "lacks best_model.pt, vocab.json"
        import_checkpoint(tmp_path / "no_such_release")


def test_cli_import_checkpoint(tmp_path):
    from typer.testing import CliRunner

    from scmamba2.cli import app

    ref, file_tokens = reference_model()
    state = release_state(ref, len(file_tokens))
    state["cls_decoder.out_layer.weight"] = torch.zeros(3, D)
    src = write_release(tmp_path / "r", state, file_tokens)
    runner = CliRunner()
    res = runner.invoke(app, ["import-checkpoint", str(src), "--out", str(tmp_path / "m")])
    assert res.exit_code == 1 and "cls_decoder.out_layer.weight" in res.output
    res = runner.invoke(app, ["import-checkpoint", str(src), "--out", str(tmp_path / "m"), "--allow-partial"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "m" / "import_report.json").read_text())
    assert list(report["not_mapped"]) == ["cls_decoder.out_layer.weight"]
    ScMamba2.from_pretrained(tmp_path / "m")
