import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Training tests run torch on one intra-op thread: on 2 shared cores, two threads contending
    with other work made GIDM steps ~10x slower, and the golden loss curves are taken this way."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
