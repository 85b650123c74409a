"""The demo's building blocks: digits tasks, a small training loop, the method suite, plots."""
