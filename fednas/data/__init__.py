"""Datasets: loaders and their registry, client partitions, few-shot tasks."""
