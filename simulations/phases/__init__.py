"""The phases of a run as objects (:mod:`simulations.phases.base`), registered by name.

Importing this package registers the built-in phases; a run walks them in the order of
:data:`fednas.config.run_config.PHASE_NAMES`.
"""

from simulations.phases import compression, hetero, meta, search, tiers, training  # noqa: F401
