"""Quality scoring math: pure functions over decoded images and CLIP similarities. `score` (the
overall score, its tiers and weights, the weight-free score), `image_metrics` (technical quality
and generation artifacts). The CLIP scorer (actors.core.clip_scorer), the scoring stage and the
report use them."""
