"""Concept fine-tuning of the Kandinsky 2.2 decoder UNet on reference photos (paper §3.3, Appendix D)."""
