"""The learned part of a perturbation prediction: a correction on top of the baseline, zero at initialisation.

For a control cell ``c`` of a group and a perturbation ``P`` the model predicts a perturbed cell of that group as
``control level + baseline(P) + correction(c, P)``, the level being the group's control mean
(:mod:`~scmamba2.tasks.perturb_effects` gives the baseline); the control cell is the context the correction
reads, not a term of the output, so the correction need not undo that one cell's noise. The
correction reads the :class:`~scmamba2.ScMamba2` encoder's state of every panel gene (the control cell with the
target genes flagged, so the target's identity arrives through the model's own gene embeddings) and, with
``gene_knowledge="pca"``, the targets' PCA gene embedding (co-expression across the training perturbations,
as the linear baseline uses). Its output layer starts at zero, so a new model predicts exactly the baseline.

:func:`train_correction` trains it on honest baselines (each training unit's baseline as if it were unseen) and
keeps it only when it beats the baseline on the validation units (lower DEG-weighted MSE, Pearson-delta on the
top-20 DE genes not lower); otherwise the correction is set to exactly zero and the record says so.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .._keys import CELL_INDEX, CONDITION, TARGET_VALUES, VALUES
from ..data.perturb import PairCollator, pair_item

log = logging.getLogger(__name__)

__all__ = ["CorrectionHead", "train_correction", "mean_correction", "better"]


class CorrectionHead(nn.Module):
    """``(B, n_panel, D)`` encoder states (+ ``(B, K)`` target knowledge) -> ``(B, n_panel)`` correction.

    ``correction_g = w_g . gelu(A h_g + C mean(h) + V x + B z + E k_g) + b_g + k_g^T M z`` with ``h_g`` gene g's
    state, ``mean(h)`` and the control cell's panel values ``x`` its context (the values are a direct path: an
    encoder trained from scratch carries them only weakly at first), ``k_g`` gene g's row of the knowledge matrix
    and ``z`` the sum of the targets' rows. The per-gene output weights ``w_g``, biases ``b_g`` and ``M`` start
    at zero.

    Parameters
    ----------
    d_model
        Width of the encoder states.
    n_genes
        Panel size.
    knowledge
        ``(n_panel, K)`` gene knowledge (PCA gene embedding), or None (the model's own gene embeddings only).
    hidden
        Width of the hidden layer.
    """

    def __init__(self, d_model: int, n_genes: int, knowledge: np.ndarray | None = None, hidden: int = 64):
        super().__init__()
        self.state = nn.Linear(d_model, hidden)
        self.cell = nn.Linear(d_model, hidden, bias=False)
        self.values = nn.Linear(n_genes, hidden, bias=False)
        self.k = 0 if knowledge is None else int(knowledge.shape[1])
        if self.k:
            K = torch.as_tensor(np.asarray(knowledge, np.float32))
            self.register_buffer("knowledge", K / K.std().clamp_min(1e-8))  # (n_panel, K), unit scale
            self.target = nn.Linear(self.k, hidden, bias=False)
            self.gene = nn.Linear(self.k, hidden, bias=False)
            self.bilinear = nn.Parameter(torch.zeros(self.k, self.k))
        self.out_w = nn.Parameter(torch.zeros(n_genes, hidden))
        self.out_b = nn.Parameter(torch.zeros(n_genes))
        self.reset_correction()

    def reset_correction(self) -> None:
        """Set the output layer (and the bilinear term) to zero: the correction is then exactly zero."""
        with torch.no_grad():
            self.out_w.zero_()
            self.out_b.zero_()
            if self.k:
                self.bilinear.zero_()

    def target_knowledge(self, flag_pos: Sequence[int]) -> torch.Tensor:
        """``(K,)`` sum of the knowledge rows of the targets in the panel (zeros for none)."""
        if not self.k:
            return torch.zeros(0)
        idx = torch.as_tensor(np.asarray(flag_pos, np.int64), device=self.knowledge.device)
        return self.knowledge[idx].sum(0) if len(idx) else torch.zeros(self.k, device=self.knowledge.device)

    def forward(self, states: torch.Tensor, values: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """``states`` (B, G, D) of the panel genes, ``values`` (B, G) the control cell's, ``z`` (B, K)."""
        a = self.state(states) + (self.cell(states.mean(1)) + self.values(values)).unsqueeze(1)  # (B, G, H)
        if self.k:
            a = a + self.target(z).unsqueeze(1) + self.gene(self.knowledge).unsqueeze(0)
        corr = (nn.functional.gelu(a) * self.out_w).sum(-1) + self.out_b  # (B, G)
        if self.k:
            corr = corr + torch.einsum("gk,kl,bl->bg", self.knowledge, self.bilinear, z)
        return corr


def _correction(net, head, batch: dict[str, torch.Tensor], n_panel: int, z: torch.Tensor | None) -> torch.Tensor:
    states = net.encode_batch(batch)[:, 1:1 + n_panel]  # (B, G, D): the panel genes
    return head(states, batch[VALUES][:, 1:1 + n_panel], z)


@torch.no_grad()
def mean_correction(net, head, C: np.ndarray, panel_ids: np.ndarray, *, flag_pos: np.ndarray,
                    extra_ids: np.ndarray, condition: int | None = None, batch_size: int = 64,
                    device: torch.device | str = "cpu") -> np.ndarray:
    """``(n_panel,)`` mean correction over the control cells ``C`` for one perturbation's tokens."""
    vocab = net.vocab
    collate = PairCollator(vocab.pad_id)
    n_panel = len(panel_ids)
    z = head.target_knowledge(flag_pos).to(device) if head.k else None
    total = np.zeros(n_panel, dtype=np.float64)
    for s in range(0, len(C), batch_size):
        items = [pair_item(c, panel_ids, vocab.cls_id, flag_pos=flag_pos, extra_ids=extra_ids)
                 for c in C[s:s + batch_size]]
        for it in items if condition is not None else ():
            it[CONDITION] = condition
        batch = {k: v.to(device) for k, v in collate(items).items()}
        zb = None if z is None else z.expand(len(items), -1)
        total += _correction(net, head, batch, n_panel, zb).double().sum(0).cpu().numpy()
    return total / max(len(C), 1)


def better(candidate: dict, best: dict, reference: dict) -> bool:
    """A validation result is kept when its DEG-weighted MSE is below the best so far and its Pearson-delta
    on the top-20 DE genes is not below the baseline's (``reference``)."""
    return (candidate["wmse"] < best["wmse"] - 1e-12
            and candidate["pearson_delta_de20"] >= reference["pearson_delta_de20"] - 1e-9)


def train_correction(net, head: CorrectionHead, loader, dataset, *, cell_base: np.ndarray,
                     cell_z: np.ndarray | None, n_panel: int, tcfg, validate: Callable[[], dict] | None,
                     device: torch.device | str = "cpu") -> dict:
    """Train ``net`` and ``head`` so that ``cell_base + correction`` fits the perturbed cells; keep the
    state that validates best, or no correction at all when none beats the baseline.

    Parameters
    ----------
    loader, dataset
        Batches of :class:`~scmamba2.data.perturb.PairDataset` pairs (``CELL_INDEX`` = the perturbed cell).
    cell_base
        ``(n_cells, n_panel)`` control level + honest baseline change of every cell's unit.
    cell_z
        ``(n_cells, K)`` target knowledge of every cell's perturbation (heads with knowledge).
    validate
        Returns ``{scale: {"wmse", "pearson_delta_de20", ...}}`` of the current model on the validation units
        (mean over units), the correction multiplied by each scale (0: the baseline); None when there are no
        validation units: then the correction is not trained and stays zero.

    Returns
    -------
    The record: ``accepted``, ``scale`` (kept scale of the correction, 0 when dropped), ``best_step``,
    ``steps``, ``val_baseline``, ``val_best``, ``history``.
    """
    from ..train.schedule import make_optimizer, warmup_cosine

    if validate is None:
        head.reset_correction()
        return {"accepted": False, "reason": "no validation units: the correction was not trained", "steps": 0}
    net.to(device)
    head.to(device)
    modules = nn.ModuleList([net, head])
    base_t = torch.as_tensor(np.asarray(cell_base, np.float32), device=device)
    z_t = None if cell_z is None else torch.as_tensor(np.asarray(cell_z, np.float32), device=device)
    opt = make_optimizer(modules, tcfg.lr, tcfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, tcfg.warmup_steps, tcfg.max_steps, tcfg.min_lr_ratio))
    modules.eval()
    reference = validate()[0.0]
    best, best_state, best_step = reference, None, 0
    history = [{"step": 0, **reference}]
    every = max(1, min(tcfg.val_every_n_steps, tcfg.max_steps))
    step, epoch = 0, 0
    while step < tcfg.max_steps:
        dataset.set_epoch(epoch)
        modules.train()
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            idx = batch[CELL_INDEX]
            z = None if z_t is None else z_t[idx]
            pred = base_t[idx] + _correction(net, head, batch, n_panel, z)
            loss = nn.functional.mse_loss(pred, batch[TARGET_VALUES][:, 1:1 + n_panel])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(modules.parameters(), tcfg.gradient_clip_val)
            opt.step()
            sched.step()
            step += 1
            if step % every == 0 or step == tcfg.max_steps:
                modules.eval()
                by_scale = validate()
                full = by_scale[max(by_scale)]
                history.append({"step": step, "loss": float(loss.detach()), **full})
                log.info("correction step %d: loss %.4f, val wMSE %.5f (baseline %.5f), val Pearson-delta "
                         "top-20 DE %.3f (baseline %.3f)", step, float(loss.detach()), full["wmse"],
                         reference["wmse"], full["pearson_delta_de20"], reference["pearson_delta_de20"])
                for scale, m in sorted(by_scale.items()):
                    if scale > 0 and better(m, best, reference):
                        best, best_step = m, step
                        best_state = copy.deepcopy(modules.state_dict())
                modules.train()
            if step >= tcfg.max_steps:
                break
        epoch += 1
    modules.eval()
    if best_state is not None:
        modules.load_state_dict(best_state)
    else:
        head.reset_correction()
    record = {"accepted": best_state is not None, "scale": float(best.get("scale", 0.0)) if best_state else 0.0,
              "best_step": best_step, "steps": step,
              "val_baseline": reference, "val_best": best, "history": history}
    if best_state is None:
        record["reason"] = "no step beat the baseline on the validation units: correction set to zero"
    return record
