"""The spec's 24 standard elements (section 4), built in: see docs/ELEMENTS.md.

- `errors`: `ElementError`, bad input naming the field at fault (no numpy).
- `worker.data`: df:produce, df:transform, df:reduce: worker elements, plain handlers that every
  worker registers as "standard" (pfnode/registry.py), so any handler of the same key
  replaces them (numpy; imported on their first packet).
- `predicates`: the test language of cf:branch and cf:loop (no numpy; runs in the front).
- `hosted/`: the node elements, which the front runs itself (`base` says which and why):
  `control` (cf:*), `flow` (df:consume), `collective` (co:*), `events` (ed:*),
  `resources` (rm:*), `meta` (mc:*), on `engine` (steps as sub-packets) and `state`;
  `catalog` imports them all. They see the node only through `host.NodeControl`.

Importing this package imports nothing else, so a worker that loads `data` does not load
the front's node elements.
"""
