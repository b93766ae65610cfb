"""Planning: pure decisions on data (the request, the plan, placement, memory, costs, languages,
limits, preflight checks). No Ray, no torch."""
