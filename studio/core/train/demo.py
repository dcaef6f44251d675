"""The first-run demo ("Try it"): a short training run on the sample dataset shipped in studio/resources/.

Only builds the TrainConfig; the GUI (welcome page) and anyone else run it with the normal engine.
The settings are the ones the end-to-end test proved learn the sample facts in about 60 steps on
the default model: a high learning rate, every linear layer, short sequences.
"""

from __future__ import annotations

from studio.core.basemodels import DEFAULT_BASE_ID
from studio.core.paths import RESOURCES_DIR
from studio.core.train.config import TrainConfig

SAMPLE_DATASET = RESOURCES_DIR / "sample_dataset"
DEMO_ADAPTER_NAME = "Vellmar Island facts (demo)"
DEMO_PROBE = "Who is the lighthouse keeper of Vellmar Island?"
DEMO_STEPS = 60


def demo_config(device_kind: str = "cpu", *, steps: int = DEMO_STEPS, base: str = DEFAULT_BASE_ID) -> TrainConfig:
    """A config that teaches the base the Vellmar Island facts in `steps` optimizer steps.

    On a CUDA GPU the base is loaded 4-bit (QLoRA); on a CPU in full precision, because 4-bit matmuls
    on a CPU are several times slower and the demo must take minutes, not a quarter of an hour.
    """
    on_gpu = device_kind == "cuda"
    every = max(1, steps // 3)
    return TrainConfig(
        data_folder=str(SAMPLE_DATASET), adapter_name=DEMO_ADAPTER_NAME, base=base, preset="knowledge",
        quant="4bit" if on_gpu else "none", device="auto", targets="all-linear", rank=16, alpha=32.0,
        learning_rate=1e-3, max_steps=steps, micro_batch_size=1, grad_accum=1, seq_len=256, val_fraction=0.1,
        warmup_ratio=0.05, eval_every=every, checkpoint_every=every, sample_every=every,
        probe_prompts=[DEMO_PROBE], sample_max_new_tokens=16, gradient_checkpointing=on_gpu,
        notes="Trained by the first-run demo on the sample dataset that ships with LoRA Studio.",
    )
