"""The spec's standard elements (cf:branch, df:produce, ...): what each one does with its
packet's data, as pure functions; the node wires them in.

- `errors`: `ElementError`, bad input naming the field at fault (no numpy).
- `data`: df:produce, df:transform, df:reduce (numpy; run in workers).
- `predicates`: the test language of cf:branch and cf:loop (no numpy; runs in the front).
"""
