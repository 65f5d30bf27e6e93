"""fednas: simulate federated and few-shot neural architecture search."""

from fednas.version import __version__

__all__ = ["__version__", "load_model"]


def load_model(path, device="cpu"):
    """Rebuild a model exported by ``fednas export`` (see
    :func:`fednas.models.export.load_model`)."""
    from fednas.models.export import load_model as _load_model

    return _load_model(path, device)
