"""Keep torch's thread count across calls into scanpy.

scanpy's sparse kernels are numba functions with ``parallel=True``. numba's ``omp`` threading layer loads the
same ``libgomp`` as torch and sets its thread count to numba's own (all cores) on the calling thread, so after
e.g. ``sc.pp.highly_variable_genes`` on a sparse matrix, a ``torch.set_num_threads(1)`` made before is undone
and torch runs its kernels on every core. On a busy machine that oversubscription made small-model training
about 3x slower, and the results differed from a one-thread run. :class:`keep_torch_threads` restores the count.
"""

from __future__ import annotations

import contextlib


class keep_torch_threads(contextlib.ContextDecorator):
    """Context manager and decorator: torch's intra-op thread count after the block is what it was before."""

    def _recreate_cm(self):  # a fresh instance per decorated call: nested calls keep their own count
        return type(self)()

    def __enter__(self):
        import torch

        self._n = torch.get_num_threads()
        return self

    def __exit__(self, *exc) -> bool:
        import torch

        if torch.get_num_threads() != self._n:
            torch.set_num_threads(self._n)
        return False
