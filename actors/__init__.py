"""The model side, vLLM's executor/worker split: `actors/core/` holds the Ray-free classes that own a
model (generator, scorer, translator) and run and are tested without Ray; the modules here are the
thin Ray actors around them (`model_actor`, `scorer_actor`, `translator_actor`). Actors import the
base, models, planning's pure types and output's PNG helpers, never the engine or anything above."""
