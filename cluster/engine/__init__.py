"""The engine on Ray: everything that talks to the cluster. `ray_runtime` (start or join Ray),
`nodes` (what the cluster has now), `replicas` (model replicas in placement groups, or warm ones),
`resident` (the registry of warm actors that outlive a run), `scheduler` (the run's event loop,
with `rate_limit`, `retry` and `replica_choice`), `scoring` and `translation` (those stages' work on
their actors). It carries out planning's decisions; it decides nothing planning can decide
without a cluster."""
