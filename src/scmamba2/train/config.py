"""Training configuration."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class TrainConfig:
    """Optimisation and data-loading settings for pretraining and fine-tuning.

    The learning rate warms up linearly for ``warmup_steps`` and then follows a cosine decay to
    ``min_lr_ratio * lr`` at ``max_steps``. Weight decay applies to matrices only. The ``*_weight`` fields
    weight the losses of :class:`~scmamba2.train.plan.TrainingPlan` (a loss is computed only when the model
    has its head and the batch its targets).
    """

    max_steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    warmup_steps: int = 100
    mask_ratio: float = 0.4
    gep_weight: float = 1.0
    mvc_weight: float = 1.0
    profile_weight: float = 1.0
    profile_min_measured: float = 0.5  # pooled sources: panel genes must be measured in this share of the cells
    profile_panel_rule: str = "variance"  # how panel genes are ranked: "variance" or "dispersion" (seurat-like)
    finetune_panel: str = "keep"  # fine-tuning: "keep" the model's panel, or choose a new one from the "data"
    panel_view_fraction: float = 0.0  # share of training cells the encoder reads through their panel genes only
    depth_thinning: float = 0.0  # share of training cells whose input counts are thinned (a shallower read)
    cluster_balance: float = 0.0  # > 0: cells of small clusters drawn more often (cluster share ** -this; 1: even)
    ema_decay: float = 0.0  # > 0: train on, but validate and keep, an exponential moving average of the weights
    contrastive_weight: float = 0.0  # InfoNCE between a cell and a view of half its tokens (training only)
    contrastive_temperature: float = 0.1
    cls_weight: float = 1.0
    ecs_weight: float = 0.0
    ecs_threshold: float = 0.6
    dab_weight: float = 1.0
    early_stopping_patience: int = 0  # > 0: stop after this many validations without a better val/loss
    val_fraction: float = 0.1
    val_every_n_steps: int = 100
    gradient_clip_val: float = 1.0
    accumulate_grad_batches: int = 1
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1  # machines; devices is then the accelerators per node
    strategy: str = "auto"  # Lightning strategy: auto, ddp, ddp_spawn, fsdp (see scmamba2.train.distributed)
    num_workers: int = 0
    seed: int = 0
    log_every_n_steps: int = 10
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps} must be >= 1")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={self.mask_ratio} must be in (0, 1)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction} must be in [0, 1)")
        if self.warmup_steps < 0 or self.lr <= 0:
            raise ValueError("warmup_steps must be >= 0 and lr > 0")
        if self.contrastive_weight < 0 or self.contrastive_temperature <= 0:
            raise ValueError("contrastive_weight must be >= 0 and contrastive_temperature > 0")
        if not 0.0 < self.profile_min_measured <= 1.0:
            raise ValueError(f"profile_min_measured={self.profile_min_measured} must be in (0, 1]")
        if self.profile_panel_rule not in ("variance", "dispersion"):
            raise ValueError(f"profile_panel_rule={self.profile_panel_rule!r} must be 'variance' or 'dispersion'")
        if self.finetune_panel not in ("keep", "data"):
            raise ValueError(f"finetune_panel={self.finetune_panel!r} must be 'keep' or 'data'")
        if not 0.0 <= self.panel_view_fraction <= 1.0:
            raise ValueError(f"panel_view_fraction={self.panel_view_fraction} must be in [0, 1]")
        if not 0.0 <= self.depth_thinning <= 1.0:
            raise ValueError(f"depth_thinning={self.depth_thinning} must be in [0, 1]")
        if not 0.0 <= self.cluster_balance <= 1.0:
            raise ValueError(f"cluster_balance={self.cluster_balance} must be in [0, 1] (0: uniform sampling; 1: "
                             "every cluster of a source drawn equally often)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay={self.ema_decay} must be in [0, 1) (0: off; e.g. 0.998 averages over "
                             "~500 steps)")
        if self.ema_decay > 0 and str(self.strategy).startswith("fsdp"):
            raise ValueError("ema_decay averages whole copies of the weights, which a sharded strategy (fsdp) does "
                             "not hold: use ema_decay=0 with fsdp")
        if self.num_nodes < 1:
            raise ValueError(f"num_nodes={self.num_nodes} must be >= 1")
        if self.accumulate_grad_batches < 1:
            raise ValueError(f"accumulate_grad_batches={self.accumulate_grad_batches} must be >= 1")
        if not isinstance(self.strategy, str) or not self.strategy:
            raise ValueError(f"strategy={self.strategy!r} must be a Lightning strategy name (auto, ddp, fsdp, ...)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown training options: {unknown}")
        return cls(**d)


def _did_you_mean(word: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(path, section: str, d, known) -> None:
    """Refuse a section that is not a mapping or has unknown keys, with a "did you mean ...?" for each."""
    from ..errors import InputError

    if not isinstance(d, dict):
        raise InputError(f"{path}: the section {section!r} must be a mapping of option: value, got {d!r}.")
    unknown = [k for k in d if k not in known]
    if unknown:
        named = "; ".join(f"{k!r}{_did_you_mean(str(k), known)}" for k in unknown)
        raise InputError(f"{path}: unknown option(s) in the {section!r} section: {named}. Its options are: "
                         f"{', '.join(sorted(known))}.")


def objective_loss_weights(tokenizer=None, model: dict | None = None) -> dict[str, float]:
    """The GEP / MVC weights of pretraining's default objective for this tokenizer and model section: continuous
    values (no tokenizer: pretraining's default) train the whole-profile decoder with GEP and MVC off (``{gep_weight:
    0, mvc_weight: 0}``) unless the model sets ``profile_genes: 0``; binned values keep :class:`TrainConfig`'s
    defaults (``{}``). :func:`scmamba2.train.pretrain.pretrain` applies the same rule when given no TrainConfig."""
    continuous = tokenizer is None or tokenizer.value_mode == "continuous"
    profile = (model or {}).get("profile_genes", 1) != 0
    return {"gep_weight": 0.0, "mvc_weight": 0.0} if continuous and profile else {}


def load_run_config(path) -> dict[str, Any]:
    """Read a YAML run configuration with the sections ``model``, ``tokenizer``, ``train`` and ``data``.

    Returns a dict with ``model`` (a dict of :class:`~scmamba2.ModelConfig` fields, ``vocab_size`` filled in
    later), ``tokenizer`` (a :class:`~scmamba2.TokenizerConfig`, None without the section; continuous values unless
    it sets ``value_mode`` or ``n_bins``), ``train`` (a :class:`TrainConfig`, None without the section; GEP / MVC weights that the
    section leaves out follow :func:`objective_loss_weights`) and
    ``data`` (a :class:`~scmamba2.data.corpus.CorpusConfig`: corpus sources, obs filter, streaming settings).
    Every problem (unreadable file, broken YAML, unknown section or key, with a "did you mean ...?", a value
    out of range) is an :class:`~scmamba2.InputError` that names the file, before any data is read.
    """
    from pathlib import Path

    import yaml

    from ..data.corpus import CorpusConfig
    from ..data.tokenize import TokenizerConfig
    from ..errors import InputError
    from ..model import ModelConfig

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read the run configuration {path}: {exc}. Give --config a YAML file.") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path} is not valid YAML: {' '.join(str(exc).split())}. Fix the line it names "
                         "(indentation, a missing ':' or an unclosed bracket are the usual causes).") from None
    sections = {"model": ModelConfig, "tokenizer": TokenizerConfig, "train": TrainConfig, "data": CorpusConfig}
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping with the sections {', '.join(sections)}, got {type(raw).__name__}.")
    _check_keys(path, "top level", raw, sections)
    parts = {}
    for name, cls in sections.items():
        part = raw.get(name) or {}
        _check_keys(path, name, part, {f.name for f in fields(cls)})
        parts[name] = part
    try:
        ModelConfig(**{"vocab_size": 8, **parts["model"]})  # values checked now, not after the data was read
        # No tokenizer section: None, so that each command uses its own default; a section without value_mode
        # keeps pretraining's continuous values, unless it sets n_bins (which only binned values use). No train
        # section: None (the command's defaults); a section without gep_weight / mvc_weight gets the objective's
        # defaults (the whole profile: GEP and MVC off).
        mode = "binned" if "n_bins" in parts["tokenizer"] else "continuous"
        tok = (TokenizerConfig.from_dict({"value_mode": mode, **parts["tokenizer"]}) if "tokenizer" in raw
               else None)
        train = (TrainConfig.from_dict({**objective_loss_weights(tok, parts["model"]), **parts["train"]})
                 if "train" in raw else None)
        return {"model": dict(parts["model"]), "tokenizer": tok, "train": train,
                "data": CorpusConfig.from_dict(parts["data"])}
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise InputError(f"{path}: {exc}") from None
        raise InputError(f"{path}: {exc}. Fix the value in the file.") from None
