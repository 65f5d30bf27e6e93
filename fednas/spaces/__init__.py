"""Search spaces: the supernet interface, its registry, the cell and width spaces.

Importing this package registers the built-in spaces (:mod:`fednas.spaces.cell`,
:mod:`fednas.spaces.width`) in :data:`fednas.spaces.registry.SPACES`.
"""

from fednas.spaces import cell, width  # noqa: F401  (register "cell" and "width")
