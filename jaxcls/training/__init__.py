"""The training loop and its parts: steps, state, optimizers, transfer, writers, metric windows, preemption."""
