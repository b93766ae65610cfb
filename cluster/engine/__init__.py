"""The engine on Ray: the scheduler, replicas and their placement groups, resident (warm) actors,
the Ray runtime, rate limits, retries, and the scoring and translation stages run on actors."""
