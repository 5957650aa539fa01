"""smp's decoders, one architecture per file, and the heads and model they share (`heads.py`)."""
