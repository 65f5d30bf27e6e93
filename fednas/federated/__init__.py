"""Federated maths: shards, masked aggregation, the server optimiser, client-side work."""
