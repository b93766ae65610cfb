"""The product's driver side, by layer (docs/architecture.md draws the flow):

entrypoints -> pipeline -> engine -> (actors) -> observability -> output -> planning, quality
-> (models) -> base. A module imports its own layer and those below it, never one above
(tests/test_architecture.py). The base, here at the top level: `errors` (the one error type and
its IMG codes), `env` (every environment variable read), `config_files` (where configs/ is), `work`
(the units every layer passes: a task, the image it made or its failure)."""
