"""Few-shot meta-learning (the only learn2learn user): MAML & co., MetaNAS, AT-NAS."""
