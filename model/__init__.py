"""MIND model: data, network, training, evaluation and export."""
