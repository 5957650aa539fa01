"""Pure array operations shared by losses and metrics."""

from jaxseg.ops.labels import check_label_range, one_hot, valid_mask

__all__ = ["check_label_range", "one_hot", "valid_mask"]
