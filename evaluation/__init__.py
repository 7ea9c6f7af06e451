"""DreamBench / Multibench evaluation: DINO, CLIP-I and CLIP-T as DreamBooth defined them."""
