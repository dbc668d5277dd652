"""Pretraining corpora: many shards of cells read piece by piece, never loaded whole.

A :class:`Corpus` is a list of shards behind one interface. A shard knows how many cells it has, its
``var`` table (gene names, and Ensembl ids when the data carries them) and how to read a sorted set of its
rows as a CSR matrix of raw counts. Two kinds exist:

- :class:`H5adShard`: one ``.h5ad`` file, opened with h5py and read through AnnData's backed sparse
  dataset (only the requested rows are decompressed);
- :class:`~scmamba2.data.soma.SomaShard`: a TileDB-SOMA experiment (the CELLxGENE Census layout), through
  the ``census`` extra.

Both accept an ``obs`` filter (``"cell_type == 'B cells' and donor in ['d1', 'd2']"``): pandas ``query``
syntax for h5ad, TileDB-SOMA ``value_filter`` syntax for SOMA, which agree on comparisons, ``and``/``or``
and ``in``. :func:`open_corpus` turns the command line's ``DATA...`` (files, folders of shards, SOMA URIs)
into a corpus; :class:`~scmamba2.data.stream.CorpusDataset` streams it to training.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError

log = logging.getLogger(__name__)

__all__ = ["Shard", "H5adShard", "Corpus", "CorpusConfig", "open_corpus", "is_soma_uri"]

SOMA_SCHEME = "soma://"


@dataclass
class CorpusConfig:
    """The ``data`` section of a run configuration: where cells come from and how they are streamed.

    Parameters
    ----------
    sources : list of str
        h5ad files, folders of h5ad shards, TileDB-SOMA experiments (local folder or ``soma://URI``); the
        command line's ``DATA...`` are added to these.
    obs_filter : str, optional
        Keep only cells matching this expression (pandas query for h5ad, SOMA value_filter for SOMA).
    layer, gene_column : str, optional
        h5ad: read ``layers[layer]`` (``"raw"``: ``raw/X``) and name genes by this ``var`` column.
    measurement, soma_layer, soma_gene_column : str
        SOMA: measurement, X layer and gene-name column (Census: ``RNA``, ``raw``, ``feature_name``).
    block_size : int, default 1024
        Consecutive cells of a shard read and tokenised together.
    buffer_size : int, default 8192
        Shuffle buffer per DataLoader worker, in cells.
    max_val_cells : int, default 2048
        Held-out cells: ``min(val_fraction * n_cells, max_val_cells)``, rounded up to whole blocks.
    min_shards : int, default 1
        Vocabulary: keep genes present in at least this many shards.
    stream : bool or None, default None
        Plain files: ``None`` streams several h5ad files (a corpus is never loaded whole) and reads a single
        file (or other formats) into memory; ``True`` always streams, ``False`` always reads into memory. Folders
        and SOMA experiments are always streamed.
    """

    sources: list = field(default_factory=list)
    obs_filter: str | None = None
    layer: str | None = None
    gene_column: str | None = None
    measurement: str = "RNA"
    soma_layer: str = "raw"
    soma_gene_column: str = "feature_name"
    block_size: int = 1024
    buffer_size: int = 8192
    max_val_cells: int = 2048
    min_shards: int = 1
    stream: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.sources, (str, Path)):
            self.sources = [self.sources]
        self.sources = [str(s) for s in self.sources]
        for name in ("block_size", "buffer_size", "min_shards"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"data.{name} must be >= 1, got {getattr(self, name)}.")
        if int(self.max_val_cells) < 0:
            raise InputError(f"data.max_val_cells must be >= 0, got {self.max_val_cells}.")

    def streams(self, data: Sequence[str | Path]) -> bool:
        """Whether ``data`` (with :attr:`sources`) is streamed rather than read into memory."""
        from .io import is_10x_matrix_dir

        # A folder is a corpus of h5ad shards (or a SOMA experiment), unless it is one 10x matrix folder: one file.
        if self.sources or any((Path(p).is_dir() and not is_10x_matrix_dir(p)) or is_soma_uri(str(p)) for p in data):
            return True
        if self.stream is None:
            return len(data) > 1 and all(str(p).endswith(".h5ad") for p in data)
        return bool(self.stream)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CorpusConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"Unknown data option(s) {unknown}; known: {sorted(known)}.")
        return cls(**d)

    def open(self, extra: Sequence[str | Path] = ()) -> "Corpus":
        """:func:`open_corpus` on ``sources + extra`` with these settings."""
        return open_corpus([*self.sources, *map(str, extra)], obs_filter=self.obs_filter, layer=self.layer,
                           gene_column=self.gene_column, measurement=self.measurement, soma_layer=self.soma_layer,
                           soma_gene_column=self.soma_gene_column)


class Shard(ABC):
    """One piece of a corpus: ``n_cells`` cells (after the obs filter) and a gene table."""

    name: str

    @property
    @abstractmethod
    def n_cells(self) -> int:
        """Cells in the shard after the obs filter."""

    @abstractmethod
    def var(self) -> pd.DataFrame:
        """The gene table, one row per matrix column; its index holds the gene names that become tokens."""

    @abstractmethod
    def read(self, rows: np.ndarray) -> sp.csr_matrix:
        """Counts of the cells at positions ``rows`` (sorted, ``0 <= rows < n_cells``), in that order."""


class _Lazy:
    """Per-process lazy handle: reopened after a fork (DataLoader workers), never pickled."""

    _handle = None
    _pid = None

    def _opened(self):
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid = self._open(), os.getpid()
        return self._handle

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"] = state["_pid"] = None
        return state


class H5adShard(_Lazy, Shard):
    """One ``.h5ad`` file, read in backed mode.

    Parameters
    ----------
    path
        The file.
    layer
        Read ``layers[layer]`` instead of ``X``; ``"raw"`` reads ``raw/X`` (with ``raw/var``).
    gene_column
        ``var`` column naming the genes (default: ``var_names``).
    obs_filter
        A pandas ``DataFrame.query`` expression over ``obs``; only matching cells belong to the shard.
    """

    def __init__(self, path: str | Path, *, layer: str | None = None, gene_column: str | None = None,
                 obs_filter: str | None = None) -> None:
        import h5py

        from ._h5ad_fast import read_frame

        self.path = Path(path)
        self.name = self.path.name
        self.layer, self.gene_column, self.obs_filter = layer, gene_column, obs_filter
        with h5py.File(self.path, "r") as f:
            key = self._matrix_key()
            if key not in f:
                raise InputError(f"{self.path} has no {key!r} matrix (layer={layer!r}); choose another layer.")
            n_obs = int(_matrix_shape(f[key])[0])
            self._var = read_frame(f["raw/var" if layer == "raw" else "var"])
            if obs_filter:
                obs = read_frame(f["obs"])
                try:
                    keep = obs.reset_index(drop=True).query(obs_filter).index.to_numpy()
                except Exception as exc:  # pandas raises many kinds for a bad expression
                    raise InputError(f"obs filter {obs_filter!r} does not apply to {self.path}: {exc}") from exc
                self._rows = np.sort(keep.astype(np.int64))
            else:
                self._rows = None
        self._n = n_obs if self._rows is None else len(self._rows)
        if gene_column is not None:
            if gene_column not in self._var.columns:
                raise InputError(f"{self.path}: var has no column {gene_column!r} (columns: "
                                 f"{list(self._var.columns)}); pass another gene column or none for var_names.")
            self._var = self._var.set_index(self._var[gene_column].astype(str), drop=False)
        self._var.index = self._var.index.astype(str)

    def _matrix_key(self) -> str:
        return "X" if self.layer is None else "raw/X" if self.layer == "raw" else f"layers/{self.layer}"

    def _open(self):
        import anndata.io as aio
        import h5py

        elem = h5py.File(self.path, "r")[self._matrix_key()]
        return aio.sparse_dataset(elem) if isinstance(elem, h5py.Group) else elem

    @property
    def n_cells(self) -> int:
        return self._n

    def var(self) -> pd.DataFrame:
        return self._var

    def read(self, rows: np.ndarray) -> sp.csr_matrix:
        rows = np.asarray(rows, dtype=np.int64)
        if self._rows is not None:
            rows = self._rows[rows]
        x = self._opened()
        if len(rows) and rows[-1] - rows[0] + 1 == len(rows):  # contiguous: one slice
            m = x[int(rows[0]): int(rows[-1]) + 1]
        else:
            m = x[rows]
        return sp.csr_matrix(m)

    def __repr__(self) -> str:
        return f"H5adShard({self.name}, {self.n_cells} cells x {len(self._var)} genes)"


def _matrix_shape(elem) -> tuple[int, int]:
    if "shape" in elem.attrs:
        return tuple(int(s) for s in elem.attrs["shape"])
    return tuple(int(s) for s in elem.shape)


@dataclass
class Corpus:
    """Shards seen as one sequence of cells: cell ``offsets[s] + i`` is row ``i`` of shard ``s``."""

    shards: list[Shard]

    def __post_init__(self) -> None:
        if not self.shards:
            raise InputError("The corpus has no shard; give h5ad files, folders of them or SOMA experiments.")
        empty = [s.name for s in self.shards if s.n_cells == 0]
        if empty:
            log.warning("%d shard(s) have no cell (after the obs filter) and are skipped: %s", len(empty),
                        ", ".join(empty[:5]))
            self.shards = [s for s in self.shards if s.n_cells > 0]
            if not self.shards:
                raise InputError("No cell is left in any shard after the obs filter.")

    @property
    def sizes(self) -> np.ndarray:
        """Cells per shard (int64)."""
        return np.array([s.n_cells for s in self.shards], dtype=np.int64)

    @property
    def offsets(self) -> np.ndarray:
        """Global id of each shard's first cell, and the total at the end."""
        return np.concatenate([[0], np.cumsum(self.sizes)])

    @property
    def n_cells(self) -> int:
        return int(self.sizes.sum())

    def __len__(self) -> int:
        return len(self.shards)

    def __repr__(self) -> str:
        return f"Corpus({len(self.shards)} shards, {self.n_cells} cells)"


def is_soma_uri(item: str | Path) -> bool:
    """True for ``soma://...`` and for a local folder that is a TileDB-SOMA experiment."""
    s = str(item)
    if s.startswith(SOMA_SCHEME):
        return True
    p = Path(s)
    return p.is_dir() and (p / "__tiledb_group.tdb").exists() and (p / "obs").is_dir() and (p / "ms").is_dir()


def open_corpus(data: Sequence[str | Path] | str | Path, *, obs_filter: str | None = None,
                layer: str | None = None, gene_column: str | None = None, measurement: str = "RNA",
                soma_layer: str = "raw", soma_gene_column: str = "feature_name") -> Corpus:
    """Build a corpus from files, folders of ``.h5ad`` shards and TileDB-SOMA experiments.

    Parameters
    ----------
    data
        Each item is an ``.h5ad`` file, a folder (all ``*.h5ad`` in it, sorted by name, become shards), a
        local folder holding a TileDB-SOMA experiment, or ``soma://URI`` (any TileDB URI of an experiment,
        e.g. ``soma:///data/census/homo_sapiens`` or ``soma://s3://bucket/path``).
    obs_filter
        Keep only the cells matching this expression (pandas query for h5ad, SOMA value_filter for SOMA).
    layer, gene_column
        For h5ad shards: the matrix (default ``X``) and the ``var`` column naming genes.
    measurement, soma_layer, soma_gene_column
        For SOMA: the measurement (``RNA``), its X layer (``raw``) and the var column naming genes
        (``feature_name``, as in CELLxGENE Census).
    """
    items = [data] if isinstance(data, (str, Path)) else list(data)
    shards: list[Shard] = []
    for item in items:
        if is_soma_uri(item):
            from .soma import SomaShard

            uri = str(item)
            uri = uri[len(SOMA_SCHEME):] if uri.startswith(SOMA_SCHEME) else uri
            shards.append(SomaShard(uri, measurement=measurement, layer=soma_layer,
                                    gene_column=soma_gene_column, obs_filter=obs_filter))
            continue
        p = Path(item)
        if p.is_dir():
            files = sorted(p.glob("*.h5ad"))
            if not files:
                raise InputError(f"{p} holds no .h5ad shard and is not a TileDB-SOMA experiment.")
            shards.extend(H5adShard(f, layer=layer, gene_column=gene_column, obs_filter=obs_filter) for f in files)
        elif p.suffix == ".h5ad" and p.is_file():
            shards.append(H5adShard(p, layer=layer, gene_column=gene_column, obs_filter=obs_filter))
        elif not p.exists():
            raise InputError(f"{p} does not exist.")
        else:
            raise InputError(f"{p} is not a corpus source: give .h5ad files, folders of .h5ad shards or "
                             "TileDB-SOMA experiments (a local experiment folder or soma://URI).")
    corpus = Corpus(shards)
    log.info("corpus: %d shards, %d cells", len(corpus), corpus.n_cells)
    return corpus
