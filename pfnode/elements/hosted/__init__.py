"""The node elements, which the front runs itself as hosted packets: `control` (cf:*),
`flow` (df:consume), `collective` (co:*), `events` (ed:*), `resources` (rm:*), `meta`
(mc:*), on `engine` (steps as sub-packets) and `state` (the resources they hold).
`pfnode.elements.catalog` imports them all."""
