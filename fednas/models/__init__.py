"""Discrete models: derived cell networks, hand-designed baselines, cost counting, export."""

#: Attribute names under which a model keeps its classifier head (looked up in this order by
#: the meta phase, ANIL, DAP's probe and transfer fine-tuning).
HEAD_NAMES = ("head", "classifier", "fc", "linear")
