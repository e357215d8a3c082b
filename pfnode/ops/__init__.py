"""What an operator and the process runtime need, leaves of the import graph: `logs`
(structured logging), `metrics` (Prometheus), `jobs` (background tasks an owner keeps),
`sdnotify` (systemd readiness)."""
