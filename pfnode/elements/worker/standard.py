"""A handler module: importing it registers the standard worker elements (df:produce,
df:transform, df:reduce; pfnode/elements/data.py) into the default registry, as standard
elements that any other handler of the same key replaces. The pool loads it in every
worker before the node's handler modules, unless the node runs with --no-data-elements."""
from __future__ import annotations

from ...registry import default_registry, register_standard

register_standard(default_registry)
