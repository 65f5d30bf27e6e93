"""fednas: simulate federated and few-shot neural architecture search."""

__version__ = "0.1.0"


def load_model(path, device="cpu"):
    """Rebuild a model exported by ``fednas export`` (see :func:`fednas.export.load_model`)."""
    from fednas.export import load_model as _load_model

    return _load_model(path, device)
