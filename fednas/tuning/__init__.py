"""Hyperparameter tuning: FedEx and successive halving."""
