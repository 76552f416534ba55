"""Using a trained model: predictions, exported artefacts, attributions and their figures."""
