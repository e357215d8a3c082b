"""Bundled handler modules: `pfnode.handlers.examples` (the spec's examples) and `pfnode.handlers.numeric` (numpy)."""
