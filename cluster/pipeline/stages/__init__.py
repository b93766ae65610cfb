"""The stages of a run, one module each, in order (cluster.pipeline.run lists them):

preflight -> select -> budget -> disk                   planning, before any cluster: nothing written
[on the Ray cluster] translate -> budget -> memory      planning that needs the cluster
                     resume -> generate -> score        the journal started, images made and scored
outcome -> price -> upload -> write -> publish          the outcome, its costs, the files, the outputs

Each stage's entry point takes the run's state and returns it; a planning stage raises an
`ImageGenError` before anything is written. Checks the dry run shares with the run are public
functions of their stage (`budget.budget_plan`, `disk.check_room`, `memory.check_fits`)."""
