"""Bundled handler modules: `handlers.examples` (the spec's examples) and `handlers.numeric` (numpy)."""
