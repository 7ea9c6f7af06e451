"""The vocabulary the tiny profile's text models share.

Tiny BLIP-2 captions are random draws from this word list, so they consist of common photo nouns that
spaCy tags as nouns and that the tiny Grounding DINO's tokenizer knows as whole words: the quickstart then
yields real (if meaningless) accepted samples through every stage and threshold.
"""

NOUNS = (
    "dog", "cat", "car", "tree", "person", "man", "woman", "house", "table", "chair", "bird", "horse",
    "boat", "flower", "cup", "ball", "hat", "bike", "book", "bottle", "bag", "shoe", "clock", "lamp",
    "phone", "plate", "bowl", "window", "door", "road", "beach", "mountain", "bench", "truck", "train",
    "plane", "kite", "umbrella", "sofa", "bed",
)
