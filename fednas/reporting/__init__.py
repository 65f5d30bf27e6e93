"""Run directories, checkpoints, plots and reports."""
