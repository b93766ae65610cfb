"""The request's bounds as plain numbers: the command line's help states them without loading the
validator (`request`, which enforces them), so a `generate` handed to the front door imports neither
pydantic nor the model registry."""

MAX_IMAGE_COUNT = 10
MAX_PARALLEL = 64
MAX_SEED = 2**32 - 1
MAX_STEPS = 200
MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 16, 4096, 16
