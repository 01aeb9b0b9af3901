"""The methods of the papers: `drslora` (CoDyRA), `gated_lora` (Selective LoRA), `lora`
(plain LoRA, the ablation without importance weights) and `zeroshot`.

Each module holds one learner; nothing is imported here, so a lookup loads only the
learner it needs (see `cl_bench.api.registry.BUILTIN_LEARNERS`).
"""
