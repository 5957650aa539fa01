"""The functional trainer: state, pure steps, optimiser, checkpoints, logging, loop."""
