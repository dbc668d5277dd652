"""A TileDB-SOMA experiment (the CELLxGENE Census layout) as a corpus shard.

The experiment's ``obs`` is queried once with the value filter, giving the ``soma_joinid`` of every cell
of the shard; rows are then read from ``ms[measurement].X[layer]`` by joinid. Genes are named by the
``var`` column ``feature_name`` (Census); ``feature_id`` (Ensembl) is kept in the var table so that the
corpus vocabulary can harmonise identifiers. ``tiledbsoma`` is imported inside the functions (the
``census`` extra).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from .corpus import Shard, _Lazy

__all__ = ["SomaShard", "import_tiledbsoma"]

log = logging.getLogger(__name__)

#: Census's defaults; an experiment written by ``tiledbsoma.io.from_h5ad`` has ``data`` and ``var_id`` instead.
CENSUS_LAYER, CENSUS_GENE_COLUMN = "raw", "feature_name"
#: var columns that name genes, in the converters' spellings (used when ``feature_name`` is absent).
GENE_COLUMN_CANDIDATES = ("var_id", "gene_name", "gene_names", "gene_symbol", "gene_symbols", "symbol", "gene")


def import_tiledbsoma():
    """Import ``tiledbsoma`` or raise an :class:`~scmamba2.InputError` naming the extra to install."""
    try:
        import tiledbsoma
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError("Reading TileDB-SOMA experiments needs tiledbsoma: pip install 'scmamba2[census]'.") from exc
    return tiledbsoma


class SomaShard(_Lazy, Shard):
    """A TileDB-SOMA experiment read by ``soma_joinid``.

    Parameters
    ----------
    uri
        The experiment's URI (a local path, ``s3://...``, ``tiledb://...``).
    measurement
        Measurement name (``"RNA"`` in Census).
    layer
        X layer (``"raw"`` in Census: raw counts).
    gene_column
        ``var`` column naming the genes (``"feature_name"`` in Census).
    obs_filter
        A TileDB-SOMA ``value_filter`` over ``obs`` (``"tissue_general == 'blood' and is_primary_data == True"``).
    """

    def __init__(self, uri: str, *, measurement: str = "RNA", layer: str = "raw", gene_column: str = "feature_name",
                 obs_filter: str | None = None) -> None:
        soma = import_tiledbsoma()
        self.uri, self.measurement, self.layer, self.obs_filter = uri, measurement, layer, obs_filter
        self.name = uri.rstrip("/").rsplit("/", 1)[-1]
        try:
            exp = soma.Experiment.open(uri)
        except Exception as exc:  # tiledbsoma raises DoesNotExistError, SOMAError, ...
            raise InputError(f"Cannot open the TileDB-SOMA experiment {uri}: {exc}") from exc
        with exp:
            if measurement not in exp.ms:
                raise InputError(f"{uri} has no measurement {measurement!r} (it has {list(exp.ms.keys())}).")
            ms = exp.ms[measurement]
            layers = list(ms.X.keys())
            if layer not in ms.X and layer == CENSUS_LAYER and len(layers) == 1:
                log.info("%s: no X layer %r (Census's default); reading its only layer %r (data.soma_layer / "
                         "--soma-layer to choose)", uri, layer, layers[0])
                layer = self.layer = layers[0]
            if layer not in ms.X:
                raise InputError(f"{uri}: measurement {measurement!r} has no X layer {layer!r} "
                                 f"(it has {layers}); pick one with --soma-layer (data.soma_layer in the YAML).")
            var = ms.var.read().concat().to_pandas()
            try:
                obs = exp.obs.read(value_filter=obs_filter, column_names=["soma_joinid"]).concat()
            except Exception as exc:
                raise InputError(f"obs filter {obs_filter!r} does not apply to {uri}: {exc}") from exc
            self._joinids = np.sort(obs.column("soma_joinid").to_numpy().astype(np.int64))
        found = [c for c in GENE_COLUMN_CANDIDATES if c in var.columns]
        if gene_column not in var.columns and gene_column == CENSUS_GENE_COLUMN and len(found) == 1:
            log.info("%s: var has no column %r (Census's default); naming genes by %r (data.soma_gene_column / "
                     "--soma-gene-column to choose)", uri, gene_column, found[0])
            gene_column = found[0]
        if gene_column not in var.columns:
            raise InputError(f"{uri}: var has no column {gene_column!r} (columns: {list(var.columns)}); "
                             "pass the column that names genes with --soma-gene-column (data.soma_gene_column "
                             "in the YAML; Census: feature_name).")
        var = var.sort_values("soma_joinid")
        self._var_joinids = var["soma_joinid"].to_numpy().astype(np.int64)
        self._var = var.drop(columns=["soma_joinid"]).set_index(var[gene_column].astype(str).to_numpy())
        self._var.index.name = None

    def _open(self):
        soma = import_tiledbsoma()
        return soma.Experiment.open(self.uri)

    @property
    def n_cells(self) -> int:
        return len(self._joinids)

    def var(self) -> pd.DataFrame:
        return self._var

    def read(self, rows: np.ndarray) -> sp.csr_matrix:
        ids = self._joinids[np.asarray(rows, dtype=np.int64)]
        x = self._opened().ms[self.measurement].X[self.layer]
        tbl = x.read(coords=(ids, self._var_joinids)).tables().concat()
        r = np.searchsorted(ids, tbl.column("soma_dim_0").to_numpy())
        c = np.searchsorted(self._var_joinids, tbl.column("soma_dim_1").to_numpy())
        v = tbl.column("soma_data").to_numpy()
        return sp.csr_matrix((v.astype(np.float32, copy=False), (r, c)), shape=(len(ids), len(self._var_joinids)))

    def __repr__(self) -> str:
        return f"SomaShard({self.uri}, {self.n_cells} cells x {len(self._var)} genes)"
