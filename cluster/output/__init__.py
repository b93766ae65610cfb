"""Output: the run's outcome and report, the folder writer, gallery, PNG files, uploads, step
outputs, and durability (journal, guard)."""
