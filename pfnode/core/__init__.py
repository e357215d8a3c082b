"""The pure rules: no asyncio, no I/O, time only as an explicit `now`. `protocol` (frames
in, messages or ready replies out), `flight` (the one record per packet), `scheduler` (the
table of packets in flight, lanes, deadlines, dependencies, admission), `dispatch` (which
worker gets which packet), `hub` (which reactor runs what), `clock` (the time source and
a fake one for tests). This package imports nothing of pfnode but `pfnode.errors`."""
