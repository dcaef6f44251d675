"""What a training run is and was: its config, events, run folder (RunDir) and checkpoints, run list,
run lock, the estimator, the demo run."""
