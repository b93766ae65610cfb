"""Memory plans: how a replica holds its model on the card it gets.

`architectures` reads model architectures as data (configs/architectures/*.yaml), `sizes` finds a
model's component sizes (safetensors headers of its weights, else its architecture), `planner`
picks the first plan that fits a card, a host and a batch. All of it is pure and torch-free, so the
driver plans before any actor exists; `actors.core.memory_apply` carries a plan out on a pipeline.
"""
