"""ScMamba2: embeddings -> bidirectional Mamba2 encoder -> heads, with its config and checkpoint format.

A checkpoint directory holds ``config.json`` (model + tokenizer config, package and format versions),
``model.safetensors`` and ``vocab.json``. Nothing here imports anndata: the model takes tensors.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from collections.abc import Collection
from typing import Any, Literal

import torch
from torch import nn

from . import __version__
from ._keys import BATCH, CONDITION, GENES, MODALITY, PADDING_MASK, PERT_FLAGS, VALUES
from .errors import CheckpointError
from .nn.bidirectional import BiMamba2Encoder
from .nn.embeddings import BinnedValueEncoder, ContinuousValueEncoder, DomainSpecificBatchNorm, GeneEncoder
from .nn.heads import BatchDiscriminator, ClassifierHead, ExpressionHead, MVCHead, ProfileHead
from .nn.lean import Dropout
from .nn.pooling import AttentionPool

log = logging.getLogger(__name__)

# 2: the batch embedding feeds the expression heads (in 1 it was added to the input tokens). A format-1
# checkpoint without a batch embedding means the same in both and loads; one with it is refused.
FORMAT_VERSION = 2
CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE = "config.json", "model.safetensors", "vocab.json"


@dataclass
class ModelConfig:
    """Architecture of an :class:`ScMamba2` model.

    ``d_state``, ``d_conv`` and ``expand`` default to Mamba2's values (64, 4, 2); ``headdim`` must divide
    ``expand * d_model``. ``value_mode`` must match the tokenizer's (bins or continuous values).

    Task parts are chosen here, when the model is built (all off by default):

    - ``n_batches`` batches (domains) known to the model, used by ``batch_embedding`` (a learned vector per
      batch added to the inputs of the expression heads, GEP's token states and MVC's cell embedding: the
      decoders know the batch, so the encoder and the cell embedding need not carry it; scGPT concatenates
      its batch embedding there instead; batch index -1 = an unknown batch, the mean vector), ``dsbn`` (domain-specific batch norm of the token embeddings) and
      ``dab`` (adversarial batch discriminator behind gradient reversal of strength ``dab_alpha``);
    - ``n_classes > 0``: a classifier head on the cell embedding;
    - ``n_pert_flags > 0``: a per-token perturbation-flag embedding (flag 0 = not perturbed);
      ``n_conditions > 0``: a per-cell condition embedding (drug, cytokine);
    - ``n_modalities > 0``: a per-token modality embedding (multi-omics; modality 0 = RNA).

    ``profile_genes > 0`` builds the whole-profile decoder (:class:`~scmamba2.nn.heads.ProfileHead`, hidden
    width ``profile_hidden``, 0 = linear): the cell embedding alone reconstructs a fixed panel of genes, zeros
    included (:mod:`scmamba2.data.panel`); the pretraining default. ``profile_likelihood``: ``"mse"`` (default)
    on the standardised log-normalised values, or ``"nb"``, a negative binomial on the panel genes' raw counts
    with the cell's library size and a dispersion per gene, as scVI's decoder (the head then predicts the log of
    the expression per ``target_sum`` counts, relative to ``expm1`` of the panel's gene mean; needs raw counts).
    ``input_genes``: the encoder reads every expressed gene (``"all"``, default) or only those of the profile
    panel (``"panel"``; training, ``embed`` and the tasks then drop the other tokens, :meth:`ScMamba2.input_cells`).
    Measured on the bundled recipe, reading the panel only reconstructs the panel better (held-out loss 0.72 vs
    0.88) but embeds worse on the selection sets (``benchmarks/results/bundled_ablation.md``), so it is off.

    Training memory (neither changes the result): ``gradient_checkpointing`` (off by default) recomputes each
    encoder layer in the backward pass; ``recompute_tokens`` (default 8,192) recomputes only each layer's
    pre-norm, ``in_proj``, conv, scan and gated norm, in slices of about 4,096 tokens, for batches of more tokens than
    that (several times less activation memory per token, at 0.85-0.9x the step's speed:
    ``benchmarks/results/train_step.md``). Batches within it (e.g. 32 cells of 256 tokens) keep the fastest
    step. None turns it off.

    ``cell_pooling`` makes the cell embedding (heads, :meth:`ScMamba2.cell_embedding`): ``"mean"`` (default)
    the mean over the valid positions (``<cls>`` included), ``"cls"`` the ``<cls>`` output (position 0). In the
    backward scan ``<cls>`` is reached last, so a gene far from it reaches it only through the decay of the
    state: measured on pbmc3k, 96 % of the ``<cls>`` output's input gradient came from the 10 nearest genes.
    The mean gives every gene a direct path. ``"attention"``: ``pool_heads`` heads, each a softmax-weighted mean
    of its share of the channels over the valid positions, with weights scored from the token outputs
    (:class:`~scmamba2.nn.pooling.AttentionPool`); it starts as the mean and learns which tokens to weight.
    Built as the bundled recipe it lowered the held-out profile loss and embedded worse on the selection sets
    (``benchmarks/results/bundled_ablation.md``), so the mean stays the default.
    """

    vocab_size: int
    d_model: int = 256
    n_layers: int = 4
    d_state: int = 64
    d_conv: int = 4
    expand: int = 2
    headdim: int = 32
    chunk_size: int = 64  # scan chunk: compute only, same output (benchmarks/results/chunk_size.md)
    n_bins: int = 51
    max_len: int = 1200
    value_mode: Literal["binned", "continuous"] = "binned"
    dropout: float = 0.1
    pad_id: int = 0
    mvc: bool = True  # build the cell-conditioned expression head
    gradient_checkpointing: bool = False
    recompute_tokens: int | None = 8192
    n_batches: int = 0
    batch_embedding: bool = False
    dsbn: bool = False
    dab: bool = False
    dab_alpha: float = 1.0
    n_classes: int = 0
    n_pert_flags: int = 0
    n_conditions: int = 0
    n_modalities: int = 0
    cell_pooling: Literal["cls", "mean", "attention"] = "mean"
    pool_heads: int = 4  # heads of cell_pooling="attention"
    profile_genes: int = 0
    profile_hidden: int = 0
    profile_likelihood: Literal["mse", "nb"] = "mse"
    input_genes: Literal["all", "panel"] = "all"

    def __post_init__(self) -> None:
        if self.vocab_size < 5:
            raise ValueError(f"vocab_size={self.vocab_size}: a vocabulary has 4 special tokens and at least one gene")
        if (self.expand * self.d_model) % self.headdim:
            raise ValueError(
                f"headdim={self.headdim} must divide expand * d_model = {self.expand * self.d_model}; "
                "choose e.g. headdim=32 or 64"
            )
        if self.cell_pooling not in ("cls", "mean", "attention"):
            raise ValueError(f"cell_pooling must be 'cls', 'mean' or 'attention', not {self.cell_pooling!r}")
        if self.cell_pooling == "attention" and (self.pool_heads < 1 or self.d_model % self.pool_heads):
            raise ValueError(f"pool_heads={self.pool_heads} must be >= 1 and divide d_model={self.d_model}")
        if self.profile_likelihood not in ("mse", "nb"):
            raise ValueError(f"profile_likelihood must be 'mse' or 'nb', not {self.profile_likelihood!r}")
        if self.input_genes not in ("all", "panel"):
            raise ValueError(f"input_genes must be 'all' or 'panel', not {self.input_genes!r}")
        if self.input_genes == "panel" and not self.profile_genes:
            raise ValueError("input_genes='panel' reads the genes of the profile decoder's panel: "
                             "set profile_genes > 0")
        if self.value_mode not in ("binned", "continuous"):
            raise ValueError(f"value_mode must be 'binned' or 'continuous', not {self.value_mode!r}")
        if self.n_bins < 3:
            raise ValueError(f"n_bins={self.n_bins}: need at least 3 (bin 0 for zeros and two expression bins)")
        if self.recompute_tokens is not None and self.recompute_tokens < 1:
            raise ValueError(f"recompute_tokens={self.recompute_tokens} must be >= 1 or None (no recomputation)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        uses_batches = [k for k in ("batch_embedding", "dsbn", "dab") if getattr(self, k)]
        if uses_batches and self.n_batches < 1:
            raise ValueError(f"{', '.join(uses_batches)} need the number of batches: set n_batches >= 1")
        for k in ("n_batches", "n_classes", "n_pert_flags", "n_conditions", "n_modalities", "profile_genes",
                  "profile_hidden"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k}={getattr(self, k)} must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CheckpointError(f"config.json has model fields this version of scmamba2 does not know: {unknown}")
        d = dict(d)
        d.setdefault("cell_pooling", "cls")  # configs written before the field existed read <cls>
        return cls(**d)


@dataclass
class ModelOutput:
    """What :meth:`ScMamba2.forward` returns."""

    states: torch.Tensor  # (B, L, D) per-token encoder outputs, position 0 = <cls>
    cell_emb: torch.Tensor  # (B, D)
    expr_pred: torch.Tensor | None = field(default=None)  # (B, L) GEP prediction per token
    mvc_pred: torch.Tensor | None = field(default=None)  # (B, L) MVC prediction per token
    class_logits: torch.Tensor | None = field(default=None)  # (B, n_classes), when built with n_classes > 0
    batch_logits: torch.Tensor | None = field(default=None)  # (B, n_batches) DAB, through gradient reversal
    profile_pred: torch.Tensor | None = field(default=None)  # (B, profile_genes) standardised panel expression


def check_checkpoint(directory: str | Path) -> Path:
    """Refuse a ``directory`` that is not a complete checkpoint (:data:`CONFIG_FILE`, :data:`WEIGHTS_FILE` and
    :data:`VOCAB_FILE`) with a :class:`CheckpointError` that says why; a bare name that is no folder is taken for
    a misspelt bundled model's name, and the bundled names are listed. Reads nothing but the folder's listing."""
    src = Path(directory)
    if not src.exists():
        name = str(directory)
        if "/" not in name and "\\" not in name:
            import difflib

            from .pretrained import available

            names = available()
            close = difflib.get_close_matches(name, names, n=1)
            raise CheckpointError(
                f"{name}: there is no such folder and no bundled model of that name"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + f"; the bundled models are {', '.join(names) or 'none'}. Give one of them or the path of a "
                "checkpoint directory."
            )
        raise CheckpointError(f"{src}: there is no such folder; give the path of a checkpoint directory (it holds "
                              f"{CONFIG_FILE}, {WEIGHTS_FILE} and {VOCAB_FILE}) or a bundled model's name.")
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE) if not (src / f).is_file()]
    if missing:
        raise CheckpointError(
            f"{src} is not a complete scmamba2 checkpoint: missing {', '.join(missing)} "
            f"(a checkpoint directory holds {CONFIG_FILE}, {WEIGHTS_FILE} and {VOCAB_FILE})"
        )
    return src


class ScMamba2(nn.Module):
    """The SC-MAMBA2 model: gene + value (+ batch) embeddings, a bidirectional Mamba2 encoder, heads.

    Parameters
    ----------
    config
        The architecture.
    vocab
        The :class:`~scmamba2.data.vocab.GeneVocab` the gene ids refer to (saved with the model).
    tokenizer_config
        The :class:`~scmamba2.data.tokenize.TokenizerConfig` used in training (saved with the model, so that
        ``embed`` tokenises new data the same way).
    """

    def __init__(self, config: ModelConfig, vocab=None, tokenizer_config=None):
        super().__init__()
        self.config = config
        self.vocab = vocab
        self.tokenizer_config = tokenizer_config
        if vocab is not None and len(vocab) != config.vocab_size:
            raise ValueError(f"vocabulary has {len(vocab)} tokens but config.vocab_size={config.vocab_size}")
        d = config.d_model
        self.gene_encoder = GeneEncoder(config.vocab_size, d, pad_id=config.pad_id)
        if config.value_mode == "binned":
            self.value_encoder = BinnedValueEncoder(config.n_bins, d)
        else:
            self.value_encoder = ContinuousValueEncoder(d)
        self.batch_encoder = nn.Embedding(config.n_batches, d) if config.batch_embedding else None
        self.dsbn = DomainSpecificBatchNorm(d, config.n_batches) if config.dsbn else None
        self.pert_encoder = nn.Embedding(config.n_pert_flags, d) if config.n_pert_flags else None
        self.condition_encoder = nn.Embedding(config.n_conditions, d) if config.n_conditions else None
        self.modality_encoder = nn.Embedding(config.n_modalities, d) if config.n_modalities else None
        self.dropout = Dropout(config.dropout)
        self.encoder = BiMamba2Encoder(
            n_layers=config.n_layers,
            d_model=d,
            d_state=config.d_state,
            d_conv=config.d_conv,
            expand=config.expand,
            headdim=config.headdim,
            chunk_size=config.chunk_size,
            dropout=config.dropout,
            gradient_checkpointing=config.gradient_checkpointing,
            recompute_tokens=config.recompute_tokens,
        )
        self.pool = AttentionPool(d, config.pool_heads) if config.cell_pooling == "attention" else None
        self.expr_head = ExpressionHead(d)
        self.mvc_head = MVCHead(d) if config.mvc else None
        self.profile_head = (ProfileHead(d, config.profile_genes, config.profile_hidden,
                                         nb=config.profile_likelihood == "nb") if config.profile_genes else None)
        self.classifier = ClassifierHead(d, config.n_classes, config.dropout) if config.n_classes else None
        self.batch_discriminator = BatchDiscriminator(d, config.n_batches, config.dab_alpha) if config.dab else None

    # ----------------------------------------------------------------------------------------------- encode
    def encode(
        self,
        genes: torch.Tensor,
        values: torch.Tensor,
        padding_mask: torch.Tensor,
        batch: torch.Tensor | None = None,
        *,
        pert_flags: torch.Tensor | None = None,
        condition: torch.Tensor | None = None,
        modality: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-token encoder outputs.

        Parameters
        ----------
        genes, values, padding_mask
            ``(B, L)`` LongTensor of vocabulary ids (position 0 = ``<cls>``), FloatTensor of values (bins or
            continuous; ``MASK_VALUE`` where hidden) and BoolTensor (True = padding, right-padded).
        batch
            ``(B,)`` batch indices; required when the model has DSBN (a batch embedding is read by
            :meth:`forward`'s expression heads, not here).
        pert_flags, modality
            ``(B, L)`` per-token perturbation flags / modality indices (models with ``n_pert_flags`` /
            ``n_modalities``; all zeros when not given).
        condition
            ``(B,)`` condition indices (models with ``n_conditions``; required there).

        Returns
        -------
        ``(B, L, d_model)``; position 0 is the ``<cls>`` cell embedding.
        """
        x = self.gene_encoder(genes) + self.value_encoder(values)  # (B, L, D)
        if self.pert_encoder is not None:
            x = x + self.pert_encoder(pert_flags if pert_flags is not None else torch.zeros_like(genes))
        if self.modality_encoder is not None:
            x = x + self.modality_encoder(modality if modality is not None else torch.zeros_like(genes))
        if self.condition_encoder is not None:
            if condition is None:
                raise ValueError("this model was built with n_conditions > 0: pass the condition indices")
            x = x + self.condition_encoder(condition).unsqueeze(1)
        if self.dsbn is not None:
            if batch is None:
                raise ValueError("this model was built with DSBN: pass the batch indices")
            x = self.dsbn(x, batch, padding_mask)
        x = self.dropout(x)
        return self.encoder(x, padding_mask)

    def encode_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """:meth:`encode` on a collated batch (keys from :mod:`scmamba2._keys`; optional ones may be absent)."""
        return self.encode(batch[GENES], batch[VALUES], batch[PADDING_MASK], batch.get(BATCH),
                           pert_flags=batch.get(PERT_FLAGS), condition=batch.get(CONDITION),
                           modality=batch.get(MODALITY))

    def input_cells(self, cells):
        """The tokens the encoder reads from :class:`~scmamba2.data.tokenize.TokenizedCells`: all of them, or
        (``input_genes="panel"``) only those of the profile decoder's panel genes."""
        if self.config.input_genes == "all":
            return cells
        return cells.keep_genes(self.profile_head.gene_ids.cpu().numpy())

    def cell_embedding(self, states: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, D)`` cell embedding from the ``(B, L, D)`` encoder outputs, by ``config.cell_pooling``."""
        if self.config.cell_pooling == "cls":
            return states[:, 0]
        if self.pool is not None:
            return self.pool(states, padding_mask)
        if padding_mask is None:
            return states.mean(1)
        valid = (~padding_mask).unsqueeze(-1).to(states.dtype)  # (B, L, 1)
        return (states * valid).sum(1) / valid.sum(1).clamp_min(1.0)

    def batch_vectors(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` learned batch vectors of the batch indices ``(B,)``; index ``-1`` (a batch the model was
        not trained on) gets the mean of the known batches' vectors, a batch-neutral decoder input."""
        known = batch >= 0
        vectors = self.batch_encoder(batch.clamp_min(0))
        if known.all():
            return vectors
        return torch.where(known.unsqueeze(-1), vectors, self.batch_encoder.weight.mean(0))

    def forward(self, batch: dict[str, torch.Tensor], token_heads: Collection[str] = ("expr", "mvc")) -> ModelOutput:
        """Encode a collated batch and apply the heads the model was built with.

        ``token_heads`` names the per-token heads to run, ``"expr"`` (GEP) and/or ``"mvc"`` (each a ``(B, L)``
        output, with a ``(B, L, D)`` activation or three kept for the backward pass); the others' outputs are
        None. The per-cell heads (profile, classifier, discriminator) always run. A training loss that does not
        read a per-token head leaves it out (``TrainingPlan``), which saves its memory and time.
        """
        unknown = set(token_heads) - {"expr", "mvc"}
        if unknown:
            raise ValueError(f"token_heads: unknown head(s) {sorted(unknown)}; choose among 'expr' and 'mvc'")
        states = self.encode_batch(batch)
        cell_emb = self.cell_embedding(states, batch[PADDING_MASK])
        dec_states, dec_cell = states, cell_emb  # what the expression heads read
        if self.batch_encoder is not None:
            if batch.get(BATCH) is None:
                raise ValueError("this model was built with a batch embedding: pass the batch indices")
            b = self.batch_vectors(batch[BATCH])  # (B, D)
            dec_states, dec_cell = states + b.unsqueeze(1), cell_emb + b
        mvc_pred = None
        if self.mvc_head is not None and "mvc" in token_heads:
            mvc_pred = self.mvc_head(dec_cell, self.gene_encoder(batch[GENES]))
        return ModelOutput(
            states=states, cell_emb=cell_emb, mvc_pred=mvc_pred,
            expr_pred=self.expr_head(dec_states) if "expr" in token_heads else None,
            profile_pred=None if self.profile_head is None else self.profile_head(dec_cell),
            class_logits=None if self.classifier is None else self.classifier(cell_emb),
            batch_logits=None if self.batch_discriminator is None else self.batch_discriminator(cell_emb),
        )

    def adapt(self, vocab=None, tokenizer_config=None, **changes) -> "ScMamba2":
        """A new model with some config fields changed (new heads, more batches, a longer vocabulary), that
        keeps every weight of this one that still fits.

        Tensors with the same name and shape are copied; the gene embedding keeps its rows when ``vocab``
        extends this model's vocabulary (new tokens appended); new heads start from their initialisation.
        A tensor that exists in both but changed shape otherwise is re-initialised and logged.
        """
        vocab = vocab if vocab is not None else self.vocab
        if vocab is not None:
            changes.setdefault("vocab_size", len(vocab))
            if self.vocab is not None and list(vocab.tokens[: len(self.vocab)]) != list(self.vocab.tokens):
                raise ValueError("the new vocabulary must start with this model's tokens, in order (append only)")
        new = type(self)(replace(self.config, **changes), vocab=vocab,
                         tokenizer_config=tokenizer_config or self.tokenizer_config)
        own, target = self.state_dict(), new.state_dict()
        with torch.no_grad():
            for k, t in target.items():
                if k not in own:
                    continue
                src = own[k]
                if src.shape == t.shape:
                    t.copy_(src)
                elif k == "gene_encoder.embedding.weight" and src.shape[1:] == t.shape[1:] and len(src) <= len(t):
                    t[: len(src)].copy_(src)
                else:
                    log.info("%s: shape %s -> %s, re-initialised", k, tuple(src.shape), tuple(t.shape))
        return new

    # ------------------------------------------------------------------------------------------ checkpoints
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json``, ``model.safetensors`` and ``vocab.json`` into ``directory``."""
        from safetensors.torch import save_file

        from .data.files import atomic_path, write_json

        if self.vocab is None:
            raise CheckpointError("the model has no vocabulary attached; build it with ScMamba2(config, vocab=...)")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        meta = {
            "scmamba2_version": __version__,
            "format_version": FORMAT_VERSION,
            "model": self.config.to_dict(),
            "tokenizer": None if self.tokenizer_config is None else self.tokenizer_config.to_dict(),
        }
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(out / WEIGHTS_FILE) as tmp:  # never a partial file; mode 0644 like the others
            save_file(state, str(tmp), metadata={"scmamba2_version": __version__})
        self.vocab.save(out / VOCAB_FILE)
        write_json(out / CONFIG_FILE, meta, indent=2)
        return out

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu") -> "ScMamba2":
        """Load a model written by :meth:`save_pretrained`; checks files, versions and every tensor's shape."""
        from safetensors.torch import load_file

        from .data.tokenize import TokenizerConfig
        from .data.vocab import GeneVocab

        src = check_checkpoint(directory)
        from .data.files import read_json

        meta = read_json(src / CONFIG_FILE, fix=f"Copy the model folder again or train it again; {src} is unusable.")
        if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
            raise CheckpointError(f"{src / CONFIG_FILE} is not an scmamba2 model config (no 'model' section)")
        fmt = meta.get("format_version")
        if fmt == 1 and meta.get("model", {}).get("batch_embedding"):
            raise CheckpointError(
                f"{src} is a format-1 checkpoint with a batch embedding, which format 1 added to the input tokens; "
                f"this scmamba2 {__version__} gives it to the expression heads instead, so its weights would not "
                "mean what they were trained for: retrain (integrate) with this version"
            )
        if fmt not in (1, FORMAT_VERSION):
            raise CheckpointError(
                f"{src}/{CONFIG_FILE} has checkpoint format {fmt}, this scmamba2 {__version__} reads format "
                f"{FORMAT_VERSION}; install the scmamba2 version that wrote it ({meta.get('scmamba2_version')})"
            )
        if meta.get("scmamba2_version") != __version__:
            log.warning("checkpoint written by scmamba2 %s, loading with %s", meta.get("scmamba2_version"), __version__)
        try:
            config = ModelConfig.from_dict(meta["model"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{src / CONFIG_FILE} holds a model config this version cannot build: {exc}") from None
        vocab = GeneVocab.load(src / VOCAB_FILE)
        if len(vocab) != config.vocab_size:
            raise CheckpointError(
                f"{VOCAB_FILE} has {len(vocab)} tokens but {CONFIG_FILE} says vocab_size={config.vocab_size}"
            )
        tok = meta.get("tokenizer")
        model = cls(config, vocab=vocab, tokenizer_config=None if tok is None else TokenizerConfig.from_dict(tok))
        try:
            weights = load_file(str(src / WEIGHTS_FILE), device=map_location)
        except Exception as exc:  # safetensors raises its own error types for truncated or empty files
            raise CheckpointError(f"{src / WEIGHTS_FILE} cannot be read ({exc}): the file is truncated or damaged. "
                                  "Copy the model folder again or train it again.") from None
        model.load_weights(weights, source=str(src / WEIGHTS_FILE))
        return model

    def load_weights(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Load ``state`` strictly, naming every missing, unexpected or mis-shaped tensor in one error."""
        own = self.state_dict()
        problems = []
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing:
            problems.append(f"missing tensors: {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected tensors: {', '.join(unexpected)}")
        for k in sorted(set(own) & set(state)):
            if own[k].shape != state[k].shape:
                problems.append(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        if problems:
            raise CheckpointError(f"{source} does not fit the model built from its config: " + "; ".join(problems))
        self.load_state_dict(state, strict=True)
