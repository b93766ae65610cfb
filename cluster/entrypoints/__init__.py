"""Entry points: what a user starts (the `multi-image` CLI, the HTTP API, batch manifests, the warm
cluster, the dry run). They parse input at the edge and hand a validated request to the pipeline."""
