"""Greedy chat answers and the export smoke test: does the model answer and stop at end of turn?

An export is only reported done after the exported model (or base + exported adapter) has been
loaded back and asked a probe prompt through its chat template, greedily, and its answer ended at
the end-of-turn token within `max_new_tokens`. The endless or garbled output people report after
exporting with other tools is exactly what this catches. The check is a plain function of the
answer, so a test (or a caller with a model that never learned to stop) can pass its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from studio.core.errors import StudioError
from studio.ml.chat.generation import end_of_turn_token

log = logging.getLogger(__name__)

PROBE_PROMPT = "What is the capital of France?"
DEFAULT_MAX_NEW_TOKENS = 48


@dataclass(frozen=True)
class GreedyAnswer:
    prompt: str
    text: str
    token_ids: tuple[int, ...]  # the generated tokens only
    max_new_tokens: int
    end_token: str
    end_token_id: int


@dataclass(frozen=True)
class SmokeResult:
    passed: bool
    message: str
    prompt: str
    answer: str
    new_tokens: int
    max_new_tokens: int
    end_token: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


Check = Callable[[GreedyAnswer], "str | None"]


class SmokeTestFailed(StudioError):
    """An export was written but did not pass its smoke test, so it was not kept."""


def greedy_chat(model, tokenizer, prompt: str, *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                stop_ids: Sequence[int] | None = None, system: str | None = None,
                require_template: bool = True) -> GreedyAnswer:
    """Ask `prompt` as one user turn, greedily. `stop_ids=None` uses the model's own generation config."""
    import torch

    messages = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": prompt}]
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    elif require_template:
        raise StudioError("This model has no chat template, so it cannot be asked a chat question.",
                          hint="Export from a base with a chat template (tokenizer_config.json or "
                               "chat_template.jinja).")
    else:
        text = prompt
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    end_token = end_of_turn_token(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs = {"max_new_tokens": int(max_new_tokens), "do_sample": False, "pad_token_id": pad_id,
              "temperature": None, "top_p": None, "top_k": None}
    if stop_ids is not None:
        kwargs["eos_token_id"] = list(stop_ids)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = model.generate(**inputs, **kwargs)
    finally:
        model.train(was_training)
    new = tuple(int(t) for t in out[0, inputs["input_ids"].shape[1]:].tolist())
    return GreedyAnswer(prompt=prompt, text=tokenizer.decode(list(new), skip_special_tokens=True).strip(),
                        token_ids=new, max_new_tokens=int(max_new_tokens), end_token=end_token,
                        end_token_id=int(tokenizer.convert_tokens_to_ids(end_token)))


def ends_at_end_of_turn(answer: GreedyAnswer) -> str | None:
    """The default check: None when the answer is non-empty and stops at the end-of-turn token."""
    ids = answer.token_ids
    if answer.end_token_id not in ids:
        return f"the answer did not end at {answer.end_token} within {answer.max_new_tokens} tokens"
    first = ids.index(answer.end_token_id)
    if first != len(ids) - 1:
        return (f"generation did not stop at {answer.end_token}: the generation config's eos_token_id "
                "does not include the end-of-turn token")
    if first == 0 or not answer.text:
        return f"the answer was empty (the first token was {answer.end_token})"
    return None


def smoke_test(model, tokenizer, *, prompt: str = PROBE_PROMPT,
               max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, stop_ids: Sequence[int] | None = None,
               check: Check | None = None) -> SmokeResult:
    """Ask the probe prompt and judge the answer with `check` (default: `ends_at_end_of_turn`)."""
    answer = greedy_chat(model, tokenizer, prompt, max_new_tokens=max_new_tokens, stop_ids=stop_ids)
    problem = (check or ends_at_end_of_turn)(answer)
    log.info("Smoke test %s: %r -> %r", "failed" if problem else "passed", prompt, answer.text)
    passed_message = ("answered and stopped at end of turn" if check is None
                      else f"passed {getattr(check, '__name__', 'the given check')}")
    return SmokeResult(passed=problem is None, message=problem or passed_message,
                       prompt=prompt, answer=answer.text, new_tokens=len(answer.token_ids),
                       max_new_tokens=int(max_new_tokens), end_token=answer.end_token)


def require_pass(result: SmokeResult, what: str) -> SmokeResult:
    """Raise SmokeTestFailed when the smoke test of `what` failed."""
    if not result.passed:
        raise SmokeTestFailed(f"The {what} failed its smoke test: {result.message}. Asked {result.prompt!r}, "
                              f"it answered {result.answer[:120]!r}. Nothing was kept.",
                              hint="Check that the adapter matches this base and chat template; a model "
                                   "that never learned to stop needs more (or cleaner) chat training.")
    return result
