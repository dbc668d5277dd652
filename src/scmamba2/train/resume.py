"""Exact resume: every random choice of a training step is a function of the seed and the step's position.

Training ``N`` steps straight and training ``N/2`` steps, stopping and resuming for the rest give the same
weights (on CPU, fixed seed) because nothing depends on how the run got to a step:

- data order: epoch ``e`` of the batch sampler is seeded by ``(seed, e)``; the loader counts the batches
  it has handed out and Lightning saves that count in the checkpoint (the loader is "stateful"), so a
  resumed run starts at the next batch of the same epoch;
- per-cell resampling (which genes of a long cell are read): seeded by ``(seed, epoch, cell)``;
- masking: the collator's generator is re-seeded for each batch from ``(seed, epoch, batch position)``,
  inside the worker that collates it, so DataLoader workers change nothing;
- dropout: :class:`StepSeed` seeds torch's global generator before each step from ``(seed, batch number,
  rank)``;
- optimiser, learning-rate schedule, global step and loop counters: restored by Lightning from the checkpoint.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import CheckpointError


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (NumPy's ``SeedSequence``): nearby inputs give unrelated seeds."""
    ss = np.random.SeedSequence([int(p) % 2**63 for p in parts])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _world() -> tuple[int, int]:
    """(number of ranks, this rank) of the initialised process group, else (1, 0)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class _EpochOrder(Sampler):
    """Yields ``(epoch, position, indices)`` for this rank's batches of one epoch, from a local start position.

    With ``R`` ranks, rank ``r`` takes the batches at positions ``r, r + R, ...`` of the epoch (the same number
    on every rank; the last ``n mod R`` batches of an epoch are left out, a different set each epoch).
    """

    def __init__(self, batch_sampler) -> None:
        self.batch_sampler = batch_sampler
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        return len(self.batch_sampler) // _world()[0]

    def __iter__(self) -> Iterator[tuple[int, int, list[int]]]:
        epoch, start = self.epoch, self.start
        world, rank = _world()
        n_local = len(self.batch_sampler) // world
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)
        for pos, idx in enumerate(self.batch_sampler):
            local, mine = divmod(pos, world)
            if mine == rank and start <= local < n_local:
                yield epoch, pos, list(idx)


class _CollatedBatches(Dataset):
    """Map ``(epoch, position, indices)`` to a collated batch; all randomness is seeded by the key."""

    def __init__(self, dataset, collator, seed: int) -> None:
        self.dataset, self.collator, self.seed = dataset, collator, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, list[int]]) -> dict[str, torch.Tensor]:
        epoch, pos, indices = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        if hasattr(self.collator, "reseed"):
            self.collator.reseed(derive_seed(self.seed, epoch, pos))
        return self.collator([self.dataset[i] for i in indices])


def _whole(batch):
    return batch


class ResumableLoader:
    """A training loader (a ``DataLoader`` inside) whose position Lightning saves in checkpoints and restores.

    Parameters
    ----------
    dataset
        Map-style dataset of cells (e.g. :class:`~scmamba2.data.collate.TokenizedDataset`); its ``set_epoch``
        is called with each batch's epoch.
    batch_sampler
        Yields lists of indices; its ``set_epoch`` (if any) is called at each epoch, and one epoch must give
        the same batches whenever it is replayed (e.g. :class:`~scmamba2.data.collate.LengthBucketSampler`).
    collator
        Turns a list of items into a batch; its ``reseed`` (if any) is called per batch with a seed derived
        from ``(seed, epoch, position)``.
    seed
        Run seed.
    num_workers
        DataLoader worker processes.
    **kwargs
        Passed to the inner ``DataLoader`` (e.g. ``pin_memory``).

    Notes
    -----
    ``state_dict()`` holds the number of batches handed out so far (``batches_consumed``), the number of
    batches per epoch and a fingerprint of the data order; ``load_state_dict`` checks that the data, batch
    size and seed are those of the checkpoint (else :class:`~scmamba2.CheckpointError`) and positions the
    next epoch's iteration at the following batch.

    It is not a ``DataLoader`` subclass on purpose: Lightning then leaves it as it is under DDP instead of
    swapping in a ``DistributedSampler``; the loader splits the batches over the ranks itself.
    """

    def __init__(self, dataset, batch_sampler, collator, *, seed: int = 0, num_workers: int = 0, **kwargs) -> None:
        order = _EpochOrder(batch_sampler)
        self.loader = DataLoader(_CollatedBatches(dataset, collator, seed), sampler=order, batch_size=None,
                                 collate_fn=_whole, num_workers=num_workers,
                                 generator=torch.Generator().manual_seed(int(seed)), **kwargs)
        self._order = order
        self.seed = int(seed)
        self.batches_consumed = 0
        self._fingerprint = self._data_order_hash()

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self):
        n = len(self._order)
        if n == 0:
            return iter(())
        self._order.epoch, self._order.start = divmod(self.batches_consumed, n)
        return self._counted(iter(self.loader))

    def _counted(self, it):
        for batch in it:
            self.batches_consumed += 1  # before the hand-over: a checkpoint taken during this step includes it
            yield batch

    def _data_order_hash(self) -> str:
        """Hash of the epoch-0 batches (cell indices in order) and the seed: the identity of the data order."""
        bs = self._order.batch_sampler
        if hasattr(bs, "set_epoch"):
            bs.set_epoch(0)
        h = hashlib.sha1(str(self.seed).encode())
        for idx in bs:  # every batch of the epoch, whatever the number of ranks
            h.update(np.asarray(idx, dtype=np.int64).tobytes())
            h.update(b"|")
        return h.hexdigest()

    def state_dict(self) -> dict[str, Any]:
        return {"batches_consumed": int(self.batches_consumed), "batches_per_epoch": len(self),
                "seed": self.seed, "fingerprint": self._fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.state_dict()
        changed = [k for k in ("batches_per_epoch", "seed", "fingerprint") if state.get(k) != mine[k]]
        if changed:
            raise CheckpointError(
                "the training checkpoint was written for another data order (different "
                f"{', '.join(changed)}: {state.get('batches_per_epoch')} batches per epoch and seed "
                f"{state.get('seed')} then, {mine['batches_per_epoch']} and {mine['seed']} now); resume with the "
                "same data, batch size, seed and sampling settings (e.g. cluster_balance) as the interrupted run, "
                "or start a new run without --resume."
            )
        self.batches_consumed = int(state["batches_consumed"])


def step_seed_callback(seed: int):
    """A Lightning callback that seeds torch's global generator (dropout) before every training batch from
    ``(seed, batch number, rank)``; the batch number is the :class:`ResumableLoader`'s count when the
    training loader is one, else Lightning's (epoch, batch index)."""
    from ._lightning_parts import StepSeed

    return StepSeed(seed)


def loader_state(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The training loader's saved state in a Lightning checkpoint (:meth:`ResumableLoader.state_dict`), if any."""
    states = (((ckpt.get("loops") or {}).get("fit_loop") or {}).get("state_dict") or {}).get("combined_loader")
    return states[0] if states else None


def check_weight_average(ckpt: dict[str, Any], tcfg, path) -> None:
    """Refuse to resume a run with a moving average of the weights without one, or the other way round."""
    if ("current_model_state" in ckpt) != (tcfg.ema_decay > 0):  # the checkpoint's weights are the average
        raise CheckpointError(
            f"{path} was written by a run {'with' if 'current_model_state' in ckpt else 'without'} a moving "
            f"average of the weights (ema_decay), and this run has ema_decay={tcfg.ema_decay}: resume with the "
            "interrupted run's train_config.json (its ema_decay)")


def check_resume(out_dir, tcfg, model_config=None, tokenizer_config=None) -> None:
    """The checks of a resume that need no data, so that a wrong call fails before the data are read.

    ``out_dir/checkpoints/last.ckpt`` must exist and be whole, and this run's seed, weight averaging
    (``tcfg``: a :class:`~scmamba2.TrainConfig`) and the model settings it gives (``model_config``: a dict or a
    :class:`~scmamba2.ModelConfig`; ``tokenizer_config``: its bins, length and value mode) must be the
    interrupted run's. The settings that follow from the data (vocabulary, gene panel, data order) are
    checked once the model is built (:func:`~scmamba2.train.pretrain.fit_resumable`).

    Raises
    ------
    CheckpointError
        Naming what differs and the fix.
    """
    from .checkpoint import MODEL_CONFIG_KEY, last_checkpoint_path, read_checkpoint

    if out_dir is None:
        raise CheckpointError("resume=True needs the out_dir of the run to continue")
    path = last_checkpoint_path(out_dir)
    ckpt = read_checkpoint(path)  # a clear CheckpointError when missing, truncated or corrupt
    check_weight_average(ckpt, tcfg, path)
    state = loader_state(ckpt) or {}
    if "seed" in state and state["seed"] != tcfg.seed:
        raise CheckpointError(f"{path} was written for another data order (seed {state['seed']} then, {tcfg.seed} "
                              "now): resume with the interrupted run's seed, or start a new run without --resume.")
    saved = ckpt.get(MODEL_CONFIG_KEY)
    if not saved:  # written before checkpoints held the model's config
        return
    given = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config or {})
    # Set by the data or the tokenizer (checked below or once the model is built), or compute only (memory, speed).
    for k in ("vocab_size", "profile_genes", "n_bins", "max_len", "value_mode", "gradient_checkpointing",
              "recompute_tokens", "chunk_size"):
        given.pop(k, None)
    if tokenizer_config is not None:
        given.update(n_bins=tokenizer_config.n_bins, max_len=tokenizer_config.max_len,
                     value_mode=tokenizer_config.value_mode)
    differ = [f"{k} {saved[k]!r} then, {v!r} now" for k, v in sorted(given.items()) if k in saved and saved[k] != v]
    if differ:
        raise CheckpointError(f"{path} does not fit the model asked for ({'; '.join(differ)}); resume with the "
                              "interrupted run's model and tokenizer settings, or start a new run without --resume.")


def keep_metrics(out_dir, before_step: int) -> list[dict[str, str]]:
    """Rows of ``out_dir/logs/metrics.csv`` logged at steps ``< before_step`` (Lightning's CSV logger empties
    the file when a new trainer starts logging; :func:`restore_metrics` puts these rows back in front).

    Lightning logs the ``k``-th optimiser step and the validation after it at step ``k - 1``, so the rows at
    ``before_step``, the checkpoint's global step, came after the checkpoint: the resumed run logs them again."""
    import csv
    from pathlib import Path

    path = Path(out_dir) / "logs" / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if r.get("step") and float(r["step"]) < before_step]


def restore_metrics(out_dir, rows: list[dict[str, str]], from_step: int) -> None:
    """Write ``rows`` followed by the resumed run's rows of steps ``>= from_step`` into ``metrics.csv`` (its
    validation before resuming, logged at step 0, is left out)."""
    import csv
    from pathlib import Path

    path = Path(out_dir) / "logs" / "metrics.csv"
    new = []
    if path.is_file():
        with open(path, newline="") as fh:
            new = [r for r in csv.DictReader(fh) if r.get("step") and float(r["step"]) >= from_step]
    merged = rows + new
    if not merged:
        return
    fields = sorted(set().union(*merged))  # Lightning's CSV logger sorts its columns the same way
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(merged)
