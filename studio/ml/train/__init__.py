"""A training run in torch: the run, the Trainer and its callbacks, publishing, checkpoints as adapters, the child process."""
