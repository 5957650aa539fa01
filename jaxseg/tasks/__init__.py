"""One module per task: binds model, loss, metrics and data."""
