"""Kandinsky 2.2 inference with λ-ECLIPSE subject conditioning: subjects, Canny control, interpolation."""
