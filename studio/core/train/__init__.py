"""What a training run is and was: its config, events, runs, run lock, the estimator, the demo run."""
