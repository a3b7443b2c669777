"""Data-parallel training over MPI (Horovod's scheme, on Open MPI and mpi4py):

    mpirun -n 4 cnnlab train --distributed            # or fit(..., distributed=True)

Every rank holds the whole model. Rank 0's initial weights and shuffling seed are broadcast, so
all ranks draw the same batches. Each rank computes the gradients of its contiguous shard of every
global batch, weighted by the shard's share of the batch; one in-place ``Allreduce(SUM)`` per
parameter (on the gradient arrays themselves: no copies beyond MPI's own) then gives every rank
the gradient of the whole batch's mean loss, and the same optimizer step keeps the weights
identical everywhere. Only rank 0 prints and writes files.

Cost model per step, for N ranks and P parameters of 4 bytes: compute shrinks as 1/N, while a
ring allreduce moves about 2 (N - 1) / N x 4P bytes per rank. For the article's network (P = 1.09
million, 4.3 MB) that is ~8.7 MB per step at any N >= 2, about 7 ms at 10 Gbit/s, against ~35 ms
of compute for a batch of 128 on one 2-core machine: scaling stays near-linear until the per-rank
batch is small enough that compute falls to the allreduce time (see README).
"""

from __future__ import annotations

import numpy as np

from cnnlab.errors import CnnlabError


class Communicator:
    """The few collective operations training needs, over ``MPI.COMM_WORLD``."""

    def __init__(self):
        try:
            from mpi4py import MPI
        except ImportError:
            raise CnnlabError("Distributed training needs mpi4py and an MPI library: pip install "
                              "'cnnlab[distributed]' and apt-get install openmpi-bin") from None
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.local_size = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of ``range(n)`` (sizes differ by at most one)."""
        size, extra = divmod(n, self.size)
        start = self.rank * size + min(self.rank, extra)
        return slice(start, start + size + (1 if self.rank < extra else 0))

    def own_random_streams(self, layers) -> None:
        """Give each rank other than 0 its own stream for every random layer (dropout,
        augmentation): the ranks start from the same seed, and would otherwise draw the very same
        flips and masks for their different shards. Derived from the layer's stream and the rank,
        so a run repeats exactly for a given number of ranks."""
        if self.rank == 0:
            return
        for layer in layers:
            entropy = int(layer.rng.integers(2**63))
            layer.rng = np.random.default_rng(np.random.SeedSequence(entropy,
                                                                     spawn_key=(self.rank,)))

    def broadcast(self, value):
        return self.comm.bcast(value, root=0)

    def sum(self, value: float) -> float:
        return float(self.comm.allreduce(float(value), op=self.MPI.SUM))

    def sum_array(self, value: np.ndarray) -> np.ndarray:
        """The element-wise sum of ``value`` over the ranks (a new array)."""
        total = np.ascontiguousarray(value).copy()
        self.comm.Allreduce(self.MPI.IN_PLACE, total, op=self.MPI.SUM)
        return total

    def sum_gradients(self, grads: dict, variables) -> None:
        """Sum every parameter's gradient over the ranks, in place, in ``variables`` order (the
        same on every rank). A rank without a gradient for one contributes zeros."""
        for variable in variables:
            grad = grads.get(variable)
            if grad is None or not grad.flags.c_contiguous or not grad.flags.writeable:
                grad = grads[variable] = (np.zeros_like(variable.value) if grad is None
                                          else np.ascontiguousarray(grad).copy())
            self.comm.Allreduce(self.MPI.IN_PLACE, grad, op=self.MPI.SUM)

    def broadcast_arrays(self, arrays) -> None:
        """Rank 0's values into every rank's arrays, in place."""
        for array in arrays:
            self.comm.Bcast(array, root=0)
