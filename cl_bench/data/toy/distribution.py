"""The toy world's pre-training distribution: every concept of every domain, in the generic style
and in its domain style, with deliberately uneven coverage.

Coverage is what makes zero-shot skill partial and graded: a domain's share of the mixture is
`DomainSpec.coverage`, and inside a domain class frequencies fall off as rank^-zipf (a seeded
rank order), so some classes are seen often and some rarely. Images in the domain style carry
captions from the domain's templates (which name the domain); generic-style images carry
generic captions. This teaches the model to tie the domain word to the domain's look, which
keeps domains apart in the union label space (PROTOCOL.md §5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cl_bench.data.toy.domains import GENERIC_TEMPLATES, DomainSpec, build_domains
from cl_bench.data.toy.render import ClassBank, make_class_bank, render

GENERATOR_VERSION = 3
GENERATOR_SEED = 20_261_123
FINAL_DOMAIN_STYLE_FRACTION = (
    0.6  # end of the curriculum: 60 % of style-seen concepts' images in the domain style
)


def class_bank_seed(domain_index: int) -> list[int]:
    return [GENERATOR_SEED, domain_index, 7]


@dataclass
class Concepts:
    """All (domain, class) pairs with their pre-training probabilities."""

    domain_index: np.ndarray  # [K]
    class_index: np.ndarray  # [K]
    probability: np.ndarray  # [K], sums to 1
    style_seen: np.ndarray  # [K] bool: pre-training shows this concept in its domain style


class PretrainDistribution:
    """Samples (images, captions, concept ids) from the pre-training mixture."""

    def __init__(self, image_size: int) -> None:
        self.specs: list[DomainSpec] = list(build_domains().values())
        self.banks: list[ClassBank] = [
            make_class_bank(s, class_bank_seed(i), image_size) for i, s in enumerate(self.specs)
        ]
        self.concepts = self._concepts()

    def _concepts(self) -> Concepts:
        dom, cls, prob, seen = [], [], [], []
        for d, spec in enumerate(self.specs):
            c = len(spec.classnames)
            rng = np.random.default_rng([GENERATOR_SEED, d, 11])
            rank = rng.permutation(c)
            w = (rank + 1.0) ** -spec.zipf
            dom.append(np.full(c, d))
            cls.append(np.arange(c))
            prob.append(spec.coverage * w / w.sum())
            seen.append(rng.permutation(c) < round(spec.style_seen * c))
        p = np.concatenate(prob)
        return Concepts(np.concatenate(dom), np.concatenate(cls), p / p.sum(), np.concatenate(seen))

    def concept_offsets(self) -> np.ndarray:
        """Global concept id of each domain's class 0 (ids = offset[domain] + class)."""
        sizes = [len(s.classnames) for s in self.specs]
        return np.concatenate([[0], np.cumsum(sizes)[:-1]])

    def sample(
        self, n: int, rng: np.random.Generator, domain_style_fraction: float
    ) -> tuple[np.ndarray, list[str], np.ndarray]:
        """uint8 images [n, H, W, 3], captions, global concept ids [n]."""
        k = rng.choice(self.concepts.probability.shape[0], size=n, p=self.concepts.probability)
        use_domain = (rng.uniform(0, 1, n) < domain_style_fraction) & self.concepts.style_seen[k]
        template_u = rng.uniform(0, 1, n)
        dom, cls = self.concepts.domain_index[k], self.concepts.class_index[k]
        size = self.banks[0].fields.shape[-1]
        images = np.empty((n, size, size, 3), dtype=np.uint8)
        captions: list[str] = [""] * n
        for d in np.unique(dom):
            sel = np.flatnonzero(dom == d)
            spec = self.specs[d]
            images[sel] = render(spec, self.banks[d], cls[sel], use_domain[sel], rng)
            for i in sel:
                templates = spec.templates if use_domain[i] else GENERIC_TEMPLATES
                captions[i] = templates[int(template_u[i] * len(templates))].format(
                    spec.classnames[cls[i]]
                )
        offsets = self.concept_offsets()
        return images, captions, offsets[dom] + cls
