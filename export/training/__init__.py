"""Head training on frozen features: the run config, the fit, evaluation and quality bar, run
directories, fine-tuning, augmentation and stopping rules."""
