"""jaxseg: losses and a functional trainer for dense prediction, sequence and detection models.

The top-level package stays light: import `jaxseg.losses` for the loss functions; the
trainer, models and data pipelines live in their own subpackages.
"""

__version__ = "0.1.0"
