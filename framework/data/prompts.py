"""Prompt formats shared by the benchmark datasets (`dataset.prompt_format`).

    zero_shot  prompt = prompt_template with the question filled in
    few_shot   the first `few_shot_examples` training problems, each as prompt_template + target_delimiter +
               its demonstration + few_shot_separator, then the zero-shot prompt
    chat       prompt = chat_user_template with the question filled in (the user message); the launcher
               then calls `TaskData.render_prompts(tokenizer)`, which applies the model's chat template

The demonstration a method trains on (`completion`) follows the same format: target_delimiter +
demonstration for zero_shot / few_shot, the bare demonstration (the assistant turn) for chat.

Templates are filled with `str.replace`, not `str.format`, so LaTeX braces such as `\\boxed{}` in an
instruction need no escaping.

Stop strings (`few_shot_stop`). A few-shot prompt invites the model, once it has answered, to go on with the next
exemplar; the answer extractors read the last `\\boxed{}` / `####`, so that invented exemplar's answer would be
scored. Every generating stage therefore ends a few-shot sequence at what begins the next exemplar (the
separator, then the template's text before `{question}`) and cuts it from the text. Zero-shot and chat prompts
need none: nothing in them invites a continuation, and a chat model ends its turn with its own end token.
"""
from __future__ import annotations

from framework.errors import ConfigError

PROMPT_FORMATS = ("zero_shot", "few_shot", "chat")


def fill(template: str, question: str) -> str:
    return template.replace("{question}", question)


def few_shot_block(template: str, delimiter: str, separator: str, exemplars: list[tuple[str, str]]) -> str:
    """The exemplars (question, demonstration) as text that precedes each prompt."""
    return "".join(fill(template, question) + delimiter + demonstration + separator
                   for question, demonstration in exemplars)


def few_shot_stop(template: str, separator: str) -> tuple[str, ...]:
    """The stop strings of a few-shot prompt: what begins the next exemplar, the separator followed by the
    template's text before `{question}` less its trailing whitespace, which a tokenizer may glue to the next word
    (GSM8K: "\\n\\nQuestion:"; a template that starts with the question: the separator alone). None when both
    are empty (the exemplars run into each other: no marker to stop at)."""
    stop = separator + template.split("{question}", 1)[0].rstrip()
    return (stop,) if stop else ()


def chat_renderer(tokenizer, system_prompt: str | None):
    """A function user message -> the chat-template text ending in the assistant's generation prompt."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("dataset.prompt_format=chat needs a tokenizer with a chat template, and this model's "
                          f"tokenizer ({type(tokenizer).__name__}) has none; use dataset.prompt_format=zero_shot "
                          "or few_shot")
    # Templates that write the BOS token themselves (Llama 3, ...) would get a second one from the
    # tokenizer call in generation and training; drop it from the text when the tokenizer adds it anyway.
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer.bos_token_id is not None and \
        tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]

    def render(message: str) -> str:
        turns = [{"role": "system", "content": system_prompt}] if system_prompt else []
        turns.append({"role": "user", "content": message})
        try:
            text = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        except Exception as error:  # e.g. templates that refuse a system turn (Gemma)
            raise ConfigError(f"dataset.prompt_format=chat: the model's chat template failed on "
                              f"{[t['role'] for t in turns]} turns ({type(error).__name__}: {error}); "
                              "dataset.system_prompt=null may help") from None
        return text[len(bos):] if adds_bos and text.startswith(bos) else text

    return render
