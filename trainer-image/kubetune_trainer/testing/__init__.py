"""Test support shipped with the trainer: tiny models built from configs (no downloads) and
small synthetic datasets a tiny model learns in a few dozen CPU steps. The demo uses them too
(`python -m kubetune_trainer.testing.fixtures upload --bucket kubetune`)."""
