"""Observability: what a run says while and after it runs. `events` (the one event stream every
layer emits into), `progress` (the live table or log lines on a terminal), `metrics` (the report's
metrics and Prometheus through Ray), `history` (past runs in SQLite: selection and cost estimates
read it)."""
