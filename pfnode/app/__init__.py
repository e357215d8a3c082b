"""The application edge: `cli` (the `pfnode` command), `config` (settings from a file, the
environment and flags), `front` (runs a node on its transport until a signal), `dialout`
(`pfnode connect`: the node as a reactor of a hub). Nothing below imports this package."""
