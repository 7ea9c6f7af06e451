"""CLIP features: everything the prior reads, so that training never runs the CLIP encoders.

Image embeddings of the target, of each subject crop and of the edge map, the caption's text hidden states,
pooled text embedding, token ids and attention mask, and each subject's token positions (where the prior
interleaves the subject's image embedding into the text states, docs/shard-contract.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lambda_eclipse.required import required
from storage.sample import Sample
from storage.schema import CONTEXT_LENGTH, FEATURE_ARRAYS
from tasks.base import ModelStage
from tasks.config import FeaturesSection, SubjectsSection

# The last of the 77 slots holds EOT after truncation: a word there or beyond is not in the text states.
LAST_WORD_SLOT = CONTEXT_LENGTH - 1


@dataclass
class ClipFeatures(ModelStage):
    name = "features"
    tflops = 4.0  # ViT-bigG-14 at 224 px, ~0.97 each: target, ~2 subjects, edge; text ~0.1
    cpu_seconds = 0.03
    features: FeaturesSection = field(default_factory=FeaturesSection)
    subjects: SubjectsSection = field(default_factory=SubjectsSection)

    def load(self) -> None:
        # torch and open_clip load in the actor only
        from lambda_eclipse.device import torch_dtype
        from lambda_eclipse.models.clip import load_clip

        # features.dtype, not runtime.dtype: the embeddings are the prior's inputs and targets, kept at fp16 or
        # better (docs/design.md: bf16 weights would round them ~8× more coarsely)
        self.dtype = torch_dtype(self.features.dtype, self.device.type, "embeddings")
        self.clip = load_clip(self.profile, self.models, self.device, self.dtype)

    def output(self, sample: Sample) -> dict:
        """Where each kept subject's noun is in the CLIP tokens, by its caption span (subjects of one noun share it)
        and the subjects this stage dropped; the embeddings are the feature row's, which the shard keeps anyway."""
        return {"tokens": {f"{d.start}:{d.end}": list(d.token_positions) for d in sample.subjects},
                "dropped": [d for d in sample.dropped_subjects if d["stage"] == self.name]}

    def apply(self, sample: Sample, record: dict) -> None:
        tokens, arrays = record["value"]["tokens"], record["arrays"]
        sample.subjects = [d for d in sample.subjects if f"{d.start}:{d.end}" in tokens]
        for det, embedding in zip(sample.subjects, arrays["subject_embeddings"], strict=True):
            det.token_positions = list(tokens[f"{det.start}:{det.end}"])
            det.embedding = embedding
        sample.dropped_subjects += record["value"]["dropped"]
        sample.features = {name: arrays[name] for name in FEATURE_ARRAYS}

    def _locate_subjects(self, sample: Sample) -> bool:
        """Set each subject's token positions; drop subjects truncated away or not on token boundaries.

        Each dropped subject is recorded in `sample.dropped_subjects` (the shard's sample JSON and stats).
        False when too few subjects are left: the sample is then rejected.
        """
        kept, dropped = [], []
        for det in sample.subjects:
            try:
                caption = required(sample.caption, "sample.caption")
                det.token_positions = self.clip.token_positions(caption, det.start, det.end)
            except ValueError:
                dropped.append((det, "not whole CLIP tokens"))
                continue
            if det.token_positions[-1] >= LAST_WORD_SLOT:
                reason = f"tokens {det.token_positions}, caption truncated at {CONTEXT_LENGTH} tokens"
                dropped.append((det, reason))
            else:
                kept.append(det)
        sample.subjects = kept
        sample.dropped_subjects += [
            {"noun": det.noun, "span": [det.start, det.end], "stage": self.name, "reason": reason}
            for det, reason in dropped
        ]
        if len(kept) < self.subjects.min_subjects:
            sample.reject_at(
                self.name,
                f"subjects dropped from the CLIP text: {', '.join(f'{d.noun!r} ({r})' for d, r in dropped)}; "
                f"{len(kept)} left, fewer than {self.subjects.min_subjects}",
            )
            return False
        return True

    def process(self, samples: list[Sample]) -> None:
        live = [s for s in samples if self._locate_subjects(s)]
        if not live:
            return
        crops = [required(det.crop, "det.crop") for s in live for det in s.subjects]
        images = [required(s.image, "sample.image") for s in live]
        edge_maps = [required(s.edge, "sample.edge") for s in live]
        # One forward over targets, subject crops and edge maps together.
        embeddings = self.clip.encode_images(images + crops + edge_maps)
        n, k = len(live), len(crops)
        targets, subjects, edges = embeddings[:n], iter(embeddings[n : n + k]), embeddings[n + k :]
        hidden, pooled, token_ids, mask = self.clip.encode_text([required(s.caption, "sample.caption") for s in live])
        for i, sample in enumerate(live):
            for det in sample.subjects:
                det.embedding = next(subjects)
            sample.features = {
                "target_embedding": targets[i],
                "edge_embedding": edges[i],
                "text_hidden_states": hidden[i].astype(np.float16),
                "text_embedding": pooled[i],
                "token_ids": token_ids[i].astype(np.int32),
                "attention_mask": mask[i].astype(np.int8),
            }


def describe_clip(stage: ClipFeatures) -> dict:
    """Embedding dims, model id and the all-zero-image embedding of the stage's loaded CLIP, for dataset.json."""
    clip = stage.clip
    return {
        "embed_dim": clip.embed_dim,
        "text_width": clip.text_width,
        "model_id": clip.model_id,
        "zero_image_embedding": [float(x) for x in clip.zero_image_embedding()],
    }
