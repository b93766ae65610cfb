"""Output: what a run leaves. `report` (the `RunOutcome` and the report files built from it),
`writer` (the folder, swapped in atomically), `gallery`, `png` (image files and their embedded
parameters), `uploader` (Google Cloud Storage), `github_output` (step outputs),
`durability/` (the journal that keeps finished images, the guard that writes
the partial report)."""
