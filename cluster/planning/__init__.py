"""Planning: pure decisions on data, no Ray and no torch, tested as tables. `request` (the one
typed request, validated at the edge; `bounds`, its limits as plain numbers), `planner` (models, tasks, seeds, fallbacks), `strategies`
(how tasks are handed out), `placement` (bundles and what nodes can hold them), `feasibility`
(memory plans some node holds), `memory/` (memory plans), `costs/` (prices, estimates, budgets),
`language` (a prompt's language, the prompt each model reads), `limits`, `preflight` (folder and
disk checks)."""
