"""DreamBooth's metrics (Ruiz et al. 2023, §4.1), on embeddings:

- DINO: the average pairwise cosine similarity between the DINO ViT-S/16 embeddings of generated and real images;
- CLIP-I: the same with CLIP image embeddings;
- CLIP-T: the average cosine similarity between the CLIP embeddings of each generated image and of the prompt.

"Pairwise" is every (generated, real) pair of a prompt. With several subjects (Multibench), DINO and CLIP-I are
computed per subject against that subject's photos and averaged over the subjects (paper Table 4). A benchmark's
score is the mean of its prompts' (each prompt has the same number of images).
"""

from __future__ import annotations

import numpy as np


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) cosine similarities between the rows of a (n, d) and b (m, d), in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def pairwise_similarity(generated: np.ndarray, real: np.ndarray) -> float:
    """DINO / CLIP-I of one subject: the mean cosine over every (generated, real) pair."""
    return float(cosine_matrix(generated, real).mean())


def subjects_similarity(generated: np.ndarray, reals: list[np.ndarray]) -> float:
    """DINO / CLIP-I of a prompt with one or more subjects: the per-subject pairwise mean, averaged over subjects."""
    return float(np.mean([pairwise_similarity(generated, real) for real in reals]))


def text_similarity(generated: np.ndarray, text: np.ndarray) -> float:
    """CLIP-T: the mean cosine between each generated image's CLIP embedding and the prompt's (d,) CLIP embedding."""
    return float(cosine_matrix(generated, np.asarray(text)[None]).mean())
