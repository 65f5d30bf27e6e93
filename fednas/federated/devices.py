"""Where a client runs: its torch device and what it reports about its placement."""

from __future__ import annotations

import os

import torch


def client_device() -> torch.device:
    """CUDA when Ray gave this worker a GPU (CUDA_VISIBLE_DEVICES is set per actor)."""
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def assigned_gpu() -> int:
    """The GPU id Ray assigned to this worker, or -1."""
    try:
        import ray

        if ray.is_initialized():
            ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
            return int(ids[0]) if ids else -1
    except Exception:  # noqa: BLE001 - outside a Ray worker there is simply no assignment
        return -1
    return -1


def ray_node() -> int:
    """The first 8 hex digits of this worker's Ray node id, as an int (-1: not in Ray)."""
    try:
        import ray

        if ray.is_initialized():
            return int(ray.get_runtime_context().get_node_id()[:8], 16)
    except Exception:  # noqa: BLE001 - outside a Ray worker there is no node
        return -1
    return -1


def placement(device: torch.device) -> dict[str, int]:
    """Where this client ran: worker pid, Ray node (:func:`ray_node`), Ray GPU id (-1: none)
    and whether it used CUDA."""
    return {"pid": os.getpid(), "ray-node": ray_node(), "gpu-id": assigned_gpu(),
            "cuda": int(device.type == "cuda")}
