"""Compression: budgets, derivation under them, students, CASD and DARTS-PT."""
