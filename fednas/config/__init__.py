"""The run configuration: the scenario's sections as frozen dataclasses, strict loading."""
