"""Encoders: one family per file, each returning the feature maps smp's decoders take."""
