"""Task tests train small models: one torch thread each (on a busy shared 2-core machine two threads contend
and run many times slower). Module scope, so that module-scoped fixtures that train run under it too."""

import pytest


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
