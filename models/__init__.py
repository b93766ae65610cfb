"""Models as data: the registry (configs/models.yaml -> typed `ModelSpec`s through one loader),
scorers and translators, whether a model's weights or credentials are here (`availability`),
prompt analysis and model selection, and the tiny random-weight pipelines of tests and demos.
Imports only the cluster base (errors, env, config files)."""
