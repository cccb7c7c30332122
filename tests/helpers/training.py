"""Training the tiny models quickly and without leaking torch's thread count into later tests."""
from __future__ import annotations

import contextlib
from typing import Iterator

# Small batches and a few epochs: enough steps on 200 images to leave chance level far behind. One torch thread:
# on 2 busy cores, two threads are several times slower than one.
TINY_TRAIN_CONFIG = dict(arch="resnet20", epochs=4, batch_size=8, lr=0.05, seed=0, threads=1)


@contextlib.contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Restore torch's thread count afterwards (``TrainConfig.threads`` sets it for the whole process)."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
