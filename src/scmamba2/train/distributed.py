"""Distributed training settings: how :attr:`TrainConfig.strategy` becomes a Lightning strategy.

- ``"auto"``: one device, or Lightning's choice.
- ``"ddp"``: data parallel, one process per device (``torchrun`` or Lightning's own launcher; on CPU the
  processes talk over gloo, on GPU over NCCL). Every rank holds the whole model; each streams its own
  part of the corpus (:class:`~scmamba2.data.stream.CorpusDataset` splits cells by rank and worker).
- ``"ddp_spawn"``: the same, started with ``multiprocessing.spawn`` (for notebooks and tests).
- ``"fsdp"``: fully sharded data parallel for models that do not fit one device with their optimiser state
  (parameters, gradients and Adam moments are sharded over the ranks). Each bidirectional Mamba2 layer
  (:class:`~scmamba2.nn.bidirectional.BiMamba2Layer`) is its own FSDP unit, so only one layer's full
  parameters are gathered at a time. Checkpoints are written as one full state dict, which loads anywhere.

With FSDP, use ``precision: bf16-mixed`` (bf16 compute, fp32 master weights and reductions), set
``model.gradient_checkpointing: true`` to recompute each layer in the backward pass (activation memory then
grows with one layer, not all of them) and ``accumulate_grad_batches`` to reach the global batch size.
``configs/pretrain_fsdp.yaml`` is a worked example; any other Lightning strategy name is passed through.
"""

from __future__ import annotations

from .config import TrainConfig

__all__ = ["make_strategy"]


def make_strategy(tcfg: TrainConfig):
    """The ``strategy`` argument of ``lightning.pytorch.Trainer`` for ``tcfg.strategy``."""
    name = tcfg.strategy
    if name == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        from ..nn.bidirectional import BiMamba2Layer

        return FSDPStrategy(auto_wrap_policy={BiMamba2Layer}, sharding_strategy="FULL_SHARD",
                            state_dict_type="full")
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        # Every parameter takes part in every step of pretraining; heads unused by a task are not built.
        return DDPStrategy(find_unused_parameters=False)
    return name
