"""Cost control: what every image costs, local (its share of GPU time) and remote (list price),
estimates before a run from its history, and budgets the scheduler holds, and `money` (amounts as people read them: small
costs stay visible). Pure, no Ray."""
