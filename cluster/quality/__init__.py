"""Quality scoring math: pure functions over decoded images and CLIP similarities."""
