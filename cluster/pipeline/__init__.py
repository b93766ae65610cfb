"""The run pipeline: one run as a list of stages over one state object (docs/architecture.md).

`run` lists the stages (`run_request`), `stages/` holds one module per stage, `state` the
`RunState` each stage takes and returns, `context` the `RunContext` an entry point builds once
(registry, limits, history, costs, upload and scoring configuration, events, guard), `session` the
part of a run that happens on its Ray cluster, `partial` the report the guard writes from the
journal when the run cannot. Planning decisions are planning's (cluster.planning); the stages
order them and keep what they decided."""
