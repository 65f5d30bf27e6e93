"""Training loops: search steps, plain training, evaluation, distillation."""
