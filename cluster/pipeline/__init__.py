"""The run pipeline: one run as a list of stages over one state object."""
