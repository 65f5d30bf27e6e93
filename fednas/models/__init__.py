"""Discrete models: derived cell networks, hand-designed baselines, cost counting, export."""
