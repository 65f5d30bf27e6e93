"""fednas: simulate federated and few-shot neural architecture search."""

__version__ = "0.1.0"
