"""Ray-free cores: the classes that own a model (generator, scorer, translator) and what they use.
They import no Ray; the actor wrappers in `actors/` make them Ray actors."""
