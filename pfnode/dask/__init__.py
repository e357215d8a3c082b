"""`--dask`: lanes on a Dask cluster. `lane` (the packets sent there and their endings
back), `config` (the `--dask` setting parsed), `worker` (what runs on a Dask worker),
`local` (`--dask local:N`, a LocalCluster in a child process). See docs/DASK.md."""
