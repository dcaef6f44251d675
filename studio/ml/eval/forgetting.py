"""The forgetting check: perplexity of the base and of base + adapter on general English text.

An adapter that raises the perplexity of plain prose a lot has overwritten general ability along
with learning the user's data. The text is studio/resources/general_text.txt (written for the studio, a
few KB). Both numbers come from the same loaded model (the adapter switched off, then on), so a
quantized base is compared with itself.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from studio.core.paths import RESOURCES_DIR

GENERAL_TEXT = RESOURCES_DIR / "general_text.txt"
MAX_TOKENS = 2048
WINDOW = 512


@dataclass(frozen=True)
class ForgettingCheck:
    base_perplexity: float
    adapter_perplexity: float
    tokens: int
    text: str  # which text was measured

    @property
    def ratio(self) -> float:
        return self.adapter_perplexity / self.base_perplexity if self.base_perplexity else float("nan")

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": round(self.ratio, 4)}


def perplexity(model, input_ids: list[int], window: int = WINDOW) -> float:
    """exp(mean next-token loss) over `input_ids`, in independent windows of `window` tokens."""
    import torch

    device = next(model.parameters()).device
    total_loss, total_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(input_ids), window):
                chunk = input_ids[start:start + window]
                if len(chunk) < 2:
                    continue
                ids = torch.tensor([chunk], device=device)
                out = model(input_ids=ids, labels=ids, use_cache=False)
                total_loss += float(out.loss) * (len(chunk) - 1)
                total_tokens += len(chunk) - 1
    finally:
        model.train(was_training)
    return math.exp(total_loss / max(1, total_tokens))


def forgetting_check(peft_model, tokenizer, text_path: Path | str = GENERAL_TEXT,
                     max_tokens: int = MAX_TOKENS) -> ForgettingCheck:
    """Perplexity on `text_path` with the adapter off (the base) and on."""
    text = Path(text_path).read_text(encoding="utf-8")
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])[:max_tokens]
    with peft_model.disable_adapter():
        base = perplexity(peft_model, ids)
    adapted = perplexity(peft_model, ids)
    return ForgettingCheck(base_perplexity=round(base, 4), adapter_perplexity=round(adapted, 4), tokens=len(ids),
                           text=Path(text_path).name)
