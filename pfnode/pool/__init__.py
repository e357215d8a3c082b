"""The worker pool: `pool` (the facade the node uses), `supervisor` (the processes),
`workerproc` (one process's handle), `forkserver`, `pipe` (front <-> worker messages),
`arena` (shared-memory rings), `worker` (the worker process's main), `buffers`
(rm:alloc's shared arrays), `capacity` (psutil readings and sizing rules)."""
