"""Entry points: what a user starts. `cli` (`multi-image` and its commands), `api/` (the HTTP API on
Ray Serve), `batch` (manifests of requests on shared warm replicas), `warm` (`cluster up`, `status`,
`down`), `dry_run` (a run's verdict without running), `summary` (what changed from the request).
Each validates its input at the edge, builds one RunContext, and hands requests to the pipeline."""
