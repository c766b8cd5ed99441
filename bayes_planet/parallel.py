"""Data-parallel training and candidate-parallel planning over JAX devices with `jax.sharding`.

One 1-D mesh, axis ``"devices"``: a training batch is split along its leading (sequence) axis, planner
candidates along theirs, and parameters and optimizer state are replicated. XLA's SPMD partitioner
inserts the all-reduce of the gradients (the loss is a mean over the batch), so the sharded step computes
the same function as the single-device one. The same code spans hosts after `jax.distributed.initialize()`:
each process then contributes its share of the batch (`shard_batch`).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "devices"


def device_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh over `devices` (default: every device of every process)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (AXIS,))


def split_leading(mesh: Mesh) -> NamedSharding:
    """Sharding that splits an array's leading axis over the mesh and replicates the rest."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def check_divisible(size: int, mesh: Mesh, key: str) -> None:
    """Fail with the config `key` named when `size` rows cannot be split evenly over the mesh."""
    devices = mesh.devices.size
    if size % devices:
        raise ValueError(f"config key {key!r} must be a multiple of the {devices} devices it is sharded over, "
                         f"got {size}")


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of a batch ``{name: [rows, ...]}`` -> global arrays split along rows.

    On one host the rows are the whole batch; under `jax.distributed` each process passes its own rows
    and the global batch is their concatenation in process order.
    """
    sharding = split_leading(mesh)
    return {name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
            for name, value in batch.items()}


def constrain_rows(x, mesh: Mesh | None):
    """Inside jit: ask for every leaf of `x` to be split along its leading axis (a no-op without a mesh)."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, split_leading(mesh))
