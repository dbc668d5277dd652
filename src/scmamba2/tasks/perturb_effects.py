"""The baseline a perturbation model starts from: pseudobulk effects of the training perturbations.

An *effect* is the mean profile of a perturbation's cells minus the mean of the control cells (of the same
group under control matching). :class:`EffectTable` holds them and answers, for any perturbation, the strongest
simple prediction of its change from the control:

- a perturbation seen in training: its own effect (in the query's group when it was measured there);
- a combination whose single-gene effects were seen: the sum of those (a gene never perturbed alone counts as
  the training mean of the single-gene effects);
- an unseen single target, drug or cytokine: the training mean of the perturbation effects;
- with ``by="group"`` (a condition whose response differs between cell types): a (condition, group) pair not
  measured gets the mean of the condition's effects over the measured groups (scGen's control + mean shift).

``honest=True`` gives the baseline the unit would get had it not been trained on (leave one perturbation out,
or one group with ``by="group"``): the learned correction is trained on top of these, so that it learns what
the baseline misses for units it has not seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["EffectTable"]

NO_GROUP = ""


@dataclass
class EffectTable:
    """Pseudobulk effects per (perturbation, group) unit and the control mean per group."""

    control: str
    by: str  # "perturbation" or "group": the unit a correction must generalise to
    names: list[str]  # (n_units,) perturbation of each unit
    groups: list[str]  # (n_units,) group of each unit (NO_GROUP without control matching)
    effects: np.ndarray  # (n_units, n_genes)
    control_groups: list[str]
    control_means: np.ndarray  # (n_groups, n_genes)
    targets: dict[str, list[str]] = field(default_factory=dict)  # genetic perturbation -> target genes

    @classmethod
    def from_cells(cls, X: np.ndarray, names: np.ndarray, groups: np.ndarray | None, control: str, *,
                   targets: dict | None = None, by: str = "perturbation") -> "EffectTable":
        """Effects of every (perturbation, group) in ``X`` (cells x genes); ``names`` per cell."""
        names = np.asarray(names).astype(str)
        groups = np.full(len(names), NO_GROUP) if groups is None else np.asarray(groups).astype(str)
        cgroups = sorted(set(groups[names == control].tolist()))
        cmeans = np.stack([X[(names == control) & (groups == g)].mean(0) for g in cgroups]).astype(np.float64)
        cidx = {g: i for i, g in enumerate(cgroups)}
        units = sorted({(n, g) for n, g in zip(names.tolist(), groups.tolist()) if n != control and g in cidx})
        eff = [X[(names == n) & (groups == g)].mean(0) - cmeans[cidx[g]] for n, g in units]
        width = X.shape[1]
        return cls(control=control, by=by, names=[u[0] for u in units], groups=[u[1] for u in units],
                   effects=np.asarray(eff, np.float64).reshape(len(units), width), control_groups=cgroups,
                   control_means=cmeans, targets={k: list(v) for k, v in (targets or {}).items()})

    # ----------------------------------------------------------------------------------------- lookups
    @property
    def n_genes(self) -> int:
        return self.control_means.shape[1]

    @property
    def perturbations(self) -> list[str]:
        return sorted(set(self.names))

    def control_mean(self, group: str | None = None) -> np.ndarray:
        """Control mean of ``group`` (mean over the groups' means when None or unknown)."""
        if group is not None and group in self.control_groups:
            return self.control_means[self.control_groups.index(group)]
        return self.control_means.mean(0)

    def _rows(self, name: str, exclude_group: str | None = None) -> list[int]:
        return [i for i, (n, g) in enumerate(zip(self.names, self.groups))
                if n == name and (exclude_group is None or g != exclude_group)]

    def effect(self, name: str, group: str | None = None) -> np.ndarray | None:
        """A unit's own effect (in ``group`` if measured there, else its mean over groups); None if unseen."""
        if group is not None:
            own = [i for i in self._rows(name) if self.groups[i] == group]
            if own:
                return self.effects[own[0]]
        rows = self._rows(name)
        return self.effects[rows].mean(0) if rows else None

    def mean_effect(self, exclude: str | None = None) -> np.ndarray:
        """Training mean of the perturbation effects (each perturbation once: its mean over groups), single-gene
        perturbations only when there are any; ``exclude`` left out (zeros when nothing is left)."""
        perts = [p for p in self.perturbations if p != exclude]
        singles = [p for p in perts if len(self.targets.get(p, ())) == 1]
        pool = singles if singles else perts
        if not pool:
            return np.zeros(self.n_genes)
        return np.mean([self.effect(p) for p in pool], axis=0)

    def is_seen(self, name: str, group: str | None = None) -> bool:
        """Whether ``baseline`` returns the unit's own effect (no correction applies to it)."""
        if name == self.control:
            return True
        if self.by == "group":
            return group is not None and any(self.groups[i] == group for i in self._rows(name))
        return bool(self._rows(name))

    def baseline(self, name: str, group: str | None = None, *, honest: bool = False) -> np.ndarray:
        """``(n_genes,)`` the baseline's change from the control for ``name`` (in ``group``); see the module
        docstring. ``honest``: as if the unit (the perturbation; with ``by="group"`` the group) were unseen."""
        if name == self.control:
            return np.zeros(self.n_genes)
        if self.by == "group":
            if not honest and self.is_seen(name, group):
                return self.effect(name, group)
            rows = self._rows(name, exclude_group=group)
            if rows:
                return self.effects[rows].mean(0)
            return self.mean_effect(exclude=name)
        if not honest and self._rows(name):
            return self.effect(name, group)
        genes = self.targets.get(name, ())
        if len(genes) > 1:  # additive: the single effects, the training mean for a gene never perturbed alone
            fallback = self.mean_effect(exclude=name)
            total = np.zeros(self.n_genes)
            for g in genes:
                single = self.effect(g) if g != name else None
                total += single if single is not None else fallback
            return total
        return self.mean_effect(exclude=name)

    # ------------------------------------------------------------------------------------------ storage
    def arrays(self) -> dict[str, np.ndarray]:
        """What :meth:`from_arrays` needs (the targets travel in the model's metadata)."""
        return {"effects": self.effects, "unit_names": np.asarray(self.names, dtype=str),
                "unit_groups": np.asarray(self.groups, dtype=str), "control_means": self.control_means,
                "control_groups": np.asarray(self.control_groups, dtype=str),
                "by": np.asarray(self.by), "control": np.asarray(self.control)}

    @classmethod
    def from_arrays(cls, z, targets: dict | None = None) -> "EffectTable":
        return cls(control=str(z["control"]), by=str(z["by"]), names=[str(v) for v in z["unit_names"]],
                   groups=[str(v) for v in z["unit_groups"]],
                   effects=np.asarray(z["effects"], np.float64).reshape(len(z["unit_names"]), -1),
                   control_groups=[str(v) for v in z["control_groups"]],
                   control_means=np.asarray(z["control_means"], np.float64),
                   targets={k: list(v) for k, v in (targets or {}).items()})
