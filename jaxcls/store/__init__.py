"""What a run leaves on disk: the workdir format, orbax checkpoints, and restoring a trained model."""
