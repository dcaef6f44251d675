"""A training run in torch: the run, the Trainer and its callbacks, checkpoints, publishing, the child process."""
