"""Import a checkpoint in the SC-MAMBA2 / scGPT release layout into an :class:`~scmamba2.ScMamba2`.

A release folder holds ``best_model.pt`` (a ``state_dict``), ``args.json`` (training arguments) and ``vocab.json``
(``{token: id}``, scGPT's format). Tensors are renamed and, where the layouts differ, converted by the table
:data:`RULES`; nothing is guessed. Each rule says how exact it is:

==========================================================  =====================================  =========
source (release)                                            ours                                    kind
==========================================================  =====================================  =========
``encoder.embedding.weight`` (V, D)                         ``gene_encoder.embedding.weight``       exact (*)
``encoder.enc_norm.{weight,bias}``                          ``gene_encoder.norm.*``                 exact
``value_encoder.embedding.weight`` (n_bins + 2, D)          ``value_encoder.embedding.weight``      exact, the pad and mask rows swapped
``value_encoder.enc_norm.*`` / ``value_encoder.norm.*``     ``value_encoder.norm.*``                exact
``value_encoder.linear1.*``, ``value_encoder.linear2.*``    ``value_encoder.embedding.weight``      converted (**)
``mamba_encoder.layers.N.mixer.{in_proj.weight,             ``encoder.layers.N.block.*``            exact if the shapes fit
conv1d.weight, conv1d.bias, dt_bias, A_log, D,
norm.weight, out_proj.weight}``
``mamba_encoder.layers.N.norm.weight``                      ``encoder.layers.N.norm.weight``        exact (RMSNorm)
``mamba_encoder.norm_f.weight``                             ``encoder.norm.weight``                 exact (RMSNorm)
``decoder.fc.{0,2,4}.{weight,bias}``                        ``expr_head.mlp.{0,2,4}.*``             exact (same MLP)
``mvc_decoder.gene2query.*``, ``mvc_decoder.W.weight``      ``mvc_head.gene_query.*``,              exact (inner-product MVC)
                                                            ``mvc_head.cell_proj.weight``
==========================================================  =====================================  =========

(*) The ids of ``vocab.json`` are kept; special tokens it lacks (scGPT has no ``<mask>``) are appended and their
rows start as the mean gene row, which the report lists.
(**) scGPT's "continuous" value encoder ``linear2(relu(linear1(x)))`` is only ever applied to the integer bins
``0..n_bins-1``, the mask value and the pad value (``-1``, ``-2``), so it *is* a lookup table of ``n_bins + 2``
rows: we evaluate it on those inputs and store the rows in our binned value embedding. Exact for binned input.

Not mappable, and reported rather than faked: a separate backward mixer (our bidirectional layer shares one
mixer for both directions), LayerNorm biases where we use RMSNorm, scGPT's ``cls_decoder`` (ReLU MLP; our
classifier uses LeakyReLU), ``batch_encoder`` (scGPT normalises it; ours does not), ``zero_logit`` heads
(explicit zero probability), DAB / DSBN parts and any ``transformer_encoder.*`` (scGPT's attention layers).
The mapping is exact tensor by tensor. Whether the imported network computes the same function as the release
also depends on how the release wires the two scan directions (we share one mixer and sum the directions,
see :mod:`scmamba2.nn.bidirectional`) and on its tokenisation; the release code was not available to check
this, so compare a few cells' embeddings with the release's own code before relying on an import.

By default every source tensor that is not mapped, every mapped tensor whose shape does not fit and every
tensor of our model left without a source is named in one :class:`~scmamba2.CheckpointError`;
``allow_partial=True`` imports what fits and leaves the rest at initialisation, listed in the report.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.files import read_json
from ..errors import CheckpointError

log = logging.getLogger(__name__)

WEIGHTS, ARGS, VOCAB = "best_model.pt", "args.json", "vocab.json"
_MIXER = r"(in_proj\.weight|conv1d\.weight|conv1d\.bias|dt_bias|A_log|D|norm\.weight|out_proj\.weight)"

# (source regex, our name template): renamed as they are, subject to the shape check.
RULES: list[tuple[str, str]] = [
    (r"encoder\.embedding\.weight", "gene_encoder.embedding.weight"),
    (r"encoder\.enc_norm\.(weight|bias)", r"gene_encoder.norm.\1"),
    (r"value_encoder\.(?:enc_norm|norm)\.(weight|bias)", r"value_encoder.norm.\1"),
    (rf"mamba_encoder\.layers\.(\d+)\.mixer\.{_MIXER}", r"encoder.layers.\1.block.\2"),
    (r"mamba_encoder\.layers\.(\d+)\.norm\.weight", r"encoder.layers.\1.norm.weight"),
    (r"mamba_encoder\.norm_f\.weight", "encoder.norm.weight"),
    (r"decoder\.fc\.([024])\.(weight|bias)", r"expr_head.mlp.\1.\2"),
    (r"mvc_decoder\.gene2query\.(weight|bias)", r"mvc_head.gene_query.\1"),
    (r"mvc_decoder\.W\.weight", "mvc_head.cell_proj.weight"),
]
# Source tensors consumed by a conversion instead of a rename.
_CONVERTED = re.compile(r"value_encoder\.(embedding\.weight|linear[12]\.(weight|bias))")
# Why known source tensors cannot be mapped.
_UNMAPPABLE = [
    (r"mamba_encoder\..*(mixer_b\.|backward|_b\.|_b$|_b_log$)",
     "a separate backward mixer: our bidirectional layer shares one mixer for both directions"),
    (r"mamba_encoder\..*norm(_f)?\.bias", "a LayerNorm bias: our encoder norms are RMSNorm (no bias)"),
    (r"cls_decoder\.", "scGPT's classifier (ReLU MLP) differs from ours (LeakyReLU): fine-tune a new head"),
    (r"batch_encoder\.", "scGPT's batch embedding has a LayerNorm, ours has none"),
    (r".*zero_logit", "explicit zero-probability heads do not exist in scmamba2"),
    (r"(grad_reverse_discriminator|dsbn|bn)\.", "DAB / DSBN parts differ in layout; add them with adapt()"),
    (r"transformer_encoder\.", "scGPT's transformer layers have no counterpart in a Mamba2 encoder"),
]


@dataclass
class ImportReport:
    """What :func:`import_checkpoint` did with each tensor."""

    mapped: dict[str, str] = field(default_factory=dict)  # source name -> our name (renamed, exact)
    converted: dict[str, str] = field(default_factory=dict)  # our name -> how it was derived
    not_mapped: dict[str, str] = field(default_factory=dict)  # source name -> why
    shape_mismatch: dict[str, str] = field(default_factory=dict)  # source name -> "ours X vs source Y"
    uninitialised: list[str] = field(default_factory=list)  # our tensors with no source (initial values kept)
    added_tokens: list[str] = field(default_factory=list)  # special tokens appended to the vocabulary

    @property
    def problems(self) -> list[str]:
        out = [f"{k}: not mapped ({why})" for k, why in self.not_mapped.items()]
        out += [f"{k}: shape does not fit ({why})" for k, why in self.shape_mismatch.items()]
        out += [f"{k}: no source tensor (left at initialisation)" for k in self.uninitialised]
        return out

    def to_dict(self) -> dict:
        return {"mapped": self.mapped, "converted": self.converted, "not_mapped": self.not_mapped,
                "shape_mismatch": self.shape_mismatch, "uninitialised": self.uninitialised,
                "added_tokens": self.added_tokens}


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read {path} ({type(exc).__name__}: {exc}); it must be a torch.save'd "
                              "state_dict (the release's best_model.pt), whole and not truncated") from exc
    for key in ("model_state_dict", "state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _infer_config(state: dict[str, torch.Tensor], args: dict, n_tokens: int, pad_id: int) -> dict:
    """Architecture from the tensor shapes (args.json only for what shapes cannot tell)."""
    from ..model import ModelConfig

    if "encoder.embedding.weight" not in state:
        raise CheckpointError("the checkpoint has no encoder.embedding.weight (the gene embedding): it is not in "
                              "the SC-MAMBA2 / scGPT layout")
    d_model = state["encoder.embedding.weight"].shape[1]
    if args.get("embsize") not in (None, d_model):
        raise CheckpointError(f"args.json says embsize={args['embsize']} but the gene embedding has {d_model} columns")
    layers = sorted({int(m.group(1)) for k in state if (m := re.match(r"mamba_encoder\.layers\.(\d+)\.", k))})
    cfg = dict(vocab_size=n_tokens, d_model=d_model, n_layers=len(layers), pad_id=pad_id,
               n_bins=int(args.get("n_bins", 51)), max_len=int(args.get("max_seq_len", 1200)),
               dropout=float(args.get("dropout", 0.1)), mvc="mvc_decoder.W.weight" in state)
    p = "mamba_encoder.layers.0.mixer."
    if layers and f"{p}out_proj.weight" in state and f"{p}A_log" in state and f"{p}conv1d.weight" in state:
        d_inner = state[f"{p}out_proj.weight"].shape[1]
        nheads = state[f"{p}A_log"].shape[0]
        conv_dim, _, d_conv = state[f"{p}conv1d.weight"].shape
        if d_inner % d_model or d_inner % nheads or (conv_dim - d_inner) % 2:
            raise CheckpointError(f"the Mamba2 mixer shapes (d_inner={d_inner}, nheads={nheads}, conv channels "
                                  f"{conv_dim}) do not fit our layout (one group of B and C)")
        cfg.update(expand=d_inner // d_model, headdim=d_inner // nheads, d_state=(conv_dim - d_inner) // 2,
                   d_conv=d_conv)
    cfg["n_layers"] = max(cfg["n_layers"], 1)
    return ModelConfig(**cfg).to_dict()


def _value_table(state, n_bins: int, mask_value: float, pad_value: float) -> tuple[torch.Tensor, str] | None:
    """Our binned value embedding (rows: bins, mask, pad) from either scGPT value-encoder style."""
    if "value_encoder.embedding.weight" in state:
        w = state["value_encoder.embedding.weight"]
        if w.shape[0] != n_bins + 2:
            return None
        # scGPT "category": row n_bins = pad, n_bins + 1 = mask; ours: n_bins = mask, n_bins + 1 = pad.
        return torch.cat([w[:n_bins], w[n_bins + 1 : n_bins + 2], w[n_bins : n_bins + 1]]), \
            "value_encoder.embedding.weight, pad and mask rows swapped"
    names = ["value_encoder.linear1.weight", "value_encoder.linear1.bias", "value_encoder.linear2.weight",
             "value_encoder.linear2.bias"]
    if all(n in state for n in names):
        w1, b1, w2, b2 = (state[n].float() for n in names)
        x = torch.cat([torch.arange(n_bins, dtype=torch.float32), torch.tensor([mask_value, pad_value])])
        with torch.no_grad():
            rows = torch.relu(x.clamp(max=512.0)[:, None] @ w1.T + b1) @ w2.T + b2  # (n_bins + 2, D)
        return rows, "linear2(relu(linear1(x))) evaluated at the bins 0..n_bins-1, the mask and the pad value"
    return None


def import_checkpoint(source: str | Path, *, allow_partial: bool = False):
    """Load a release folder (``best_model.pt`` + ``args.json`` + ``vocab.json``) into a new ScMamba2.

    Parameters
    ----------
    source
        The folder (or the path of its ``best_model.pt``).
    allow_partial
        Import what maps and keep the initial values of the rest (listed in the report) instead of raising.

    Returns
    -------
    (model, report)
        An :class:`~scmamba2.ScMamba2` with the release's vocabulary and a binned tokenizer of its ``n_bins`` /
        ``max_seq_len``, and the :class:`ImportReport`. Save it with ``model.save_pretrained(dir)``.

    Raises
    ------
    CheckpointError
        A file is missing or unreadable, or (without ``allow_partial``) any tensor does not fit, naming each.
    """
    from ..data.tokenize import TokenizerConfig
    from ..data.vocab import GeneVocab
    from ..model import ModelConfig, ScMamba2

    src = Path(source)
    folder = src.parent if src.is_file() else src
    weights = src if src.is_file() else folder / WEIGHTS
    if not src.exists():
        raise CheckpointError(f"{src} does not exist: give the release folder that holds {WEIGHTS}, {ARGS} and "
                              f"{VOCAB}")
    missing = [p.name for p in (weights, folder / VOCAB) if not p.is_file()]
    if missing:
        raise CheckpointError(f"{folder} lacks {', '.join(missing)}: a release folder holds {WEIGHTS}, {ARGS} "
                              f"and {VOCAB}")
    args = read_json(folder / ARGS, fix="Restore it from the release.") if (folder / ARGS).is_file() else {}
    if not isinstance(args, dict):
        raise CheckpointError(f"{folder / ARGS} must hold a JSON object of training arguments; restore it from "
                              "the release (or delete it: the defaults are then used)")
    if not args:
        log.warning("%s has no %s: the settings that tensor shapes cannot tell (n_bins, max_seq_len, ...) take "
                    "our defaults; check them in the imported config.json", folder, ARGS)
    state = _load_state(weights)
    n_file = len(read_json(folder / VOCAB, fix="Restore it from the release."))
    vocab = GeneVocab.load(folder / VOCAB, add_missing_specials=True)
    report = ImportReport(added_tokens=vocab.tokens[n_file:])
    emb = state.get("encoder.embedding.weight")
    if emb is not None and emb.shape[0] != n_file:
        raise CheckpointError(f"{VOCAB} has {n_file} tokens but encoder.embedding.weight has {emb.shape[0]} rows")

    config = ModelConfig.from_dict(_infer_config(state, args, len(vocab), vocab.pad_id))
    model = ScMamba2(config, vocab=vocab, tokenizer_config=TokenizerConfig(n_bins=config.n_bins,
                                                                           max_len=config.max_len))
    ours = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if _CONVERTED.fullmatch(name):
            continue
        target = next((re.sub(f"^{pat}$", tpl, name) for pat, tpl in RULES if re.fullmatch(pat, name)), None)
        if target is None:
            why = next((w for pat, w in _UNMAPPABLE if re.match(pat, name)), "no rule maps this name")
            report.not_mapped[name] = why
            continue
        want = ours.get(target)
        if target == "gene_encoder.embedding.weight" and want is not None and t.shape[1:] == want.shape[1:] \
                and t.shape[0] <= want.shape[0]:
            t = torch.cat([t, t[: len(t)].mean(0, keepdim=True).expand(want.shape[0] - t.shape[0], -1)])
            if report.added_tokens:
                report.converted[target] = f"rows of {name}; {report.added_tokens} start as the mean row"
        if want is None or tuple(want.shape) != tuple(t.shape):
            ours_shape = "absent" if want is None else tuple(want.shape)
            report.shape_mismatch[name] = f"ours {target} {ours_shape} vs source {tuple(t.shape)}"
            continue
        new[target] = t.to(want.dtype)
        report.mapped[name] = target

    table = _value_table(state, config.n_bins, float(args.get("mask_value", -1)), float(args.get("pad_value", -2)))
    vkey = "value_encoder.embedding.weight"
    if table is not None and vkey in ours and tuple(table[0].shape) == tuple(ours[vkey].shape):
        new[vkey] = table[0].to(ours[vkey].dtype)
        report.converted[vkey] = table[1]
    else:
        for n in (k for k in state if _CONVERTED.fullmatch(k)):
            report.not_mapped[n] = "value encoder of another layout or size than n_bins + 2 rows"
    report.uninitialised = sorted(set(ours) - set(new))

    if report.problems and not allow_partial:
        raise CheckpointError(
            f"{weights} does not map completely onto scmamba2 ({len(report.problems)} problems): "
            + "; ".join(report.problems)
            + ". Pass allow_partial=True (--allow-partial) to import the tensors that fit and start the rest "
            "from initialisation; the table of mappings is in scmamba2.train.import_checkpoint."
        )
    with torch.no_grad():
        for k, v in new.items():
            ours[k].copy_(v)
    model.load_state_dict(ours)
    log.info("imported %d tensors (%d converted) from %s; %d not mapped, %d left at initialisation",
             len(report.mapped), len(report.converted), weights, len(report.not_mapped), len(report.uninitialised))
    return model, report
