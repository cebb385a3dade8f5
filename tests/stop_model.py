"""A few-shot GSM8K task of one exemplar and one problem, and a tiny character-level model that answers the problem
and then goes on to write a next "Question:" with another answer: what the few-shot stop strings must cut
(tests/test_stop_strings.py on the transformers engine, tests/test_vllm_engine.py on vLLM).

The model is trained in a few seconds until greedy decoding writes CONTINUATION exactly; without stop strings the
extractor then reads the invented exemplar's "#### 9", with them the answer's "#### 6" (the gold).
"""
from __future__ import annotations

import json
import string
from pathlib import Path

import torch

EXEMPLAR = {"question": "Ann has 3 pens and gets 4.", "answer": "3 + 4 = 7\n#### 7"}
PROBLEM = {"question": "Kim has 5 cards and gets 1.", "answer": "5 + 1 = 6\n#### 6"}
GOLD, INVENTED = "6", "9"
# what the model writes after the few-shot prompt: its answer, then an exemplar it invents
ANSWER = " 5 + 1 = 6\n#### 6"
CONTINUATION = ANSWER + "\n\nQuestion: Bo has 9.\nAnswer: #### 9"
MAX_NEW_TOKENS = len(CONTINUATION) + 8  # one token a character: room to write it all


def write_dataset(directory: Path) -> Path:
    """GSM8K-format train.jsonl (the exemplar) and test.jsonl (the problem)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.jsonl").write_text(json.dumps(EXEMPLAR) + "\n")
    (directory / "test.jsonl").write_text(json.dumps(PROBLEM) + "\n")
    return directory


def load_few_shot(directory: Path):
    """The task as `dataset=gsm8k dataset.prompt_format=few_shot dataset.few_shot_examples=1` loads it."""
    from framework.data.benchmarks import GSM8KDatasetConfig, load_gsm8k

    return load_gsm8k(GSM8KDatasetConfig(path=str(directory), prompt_format="few_shot", few_shot_examples=1))


def char_tokenizer():
    """One token per printable character (the embedded word-level tokenizer has no "Question")."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(["<pad>", "</s>", "<unk>"])}
    for character in string.printable:
        vocab.setdefault(character, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   clean_up_tokenization_spaces=False, padding_side="left", model_max_length=512)


def trained_model(tokenizer, prompt: str, max_steps: int = 400, margin: float = 1.0):
    """A 2-layer Llama (head size 32: vLLM's CPU attention refuses 16) trained on prompt + CONTINUATION + EOS until
    every continuation token leads the runner-up after its prefix by `margin` logits: greedy decoding then writes
    it exactly, on either engine (float noise between them is orders of magnitude smaller)."""
    from framework import tiny

    model = tiny.build_model(tokenizer, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                             max_positions=512, seed=0)
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = torch.tensor([prompt_ids + tokenizer(CONTINUATION)["input_ids"] + [tokenizer.eos_token_id]])
    labels = ids.clone()
    labels[0, : len(prompt_ids)] = -100  # the continuation is what it learns; the prompt is given
    targets = ids[0, len(prompt_ids):]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(max_steps):
        output = model(input_ids=ids, labels=labels)
        logits = output.logits[0, len(prompt_ids) - 1: -1].detach()
        target = logits.gather(1, targets[:, None])[:, 0]
        runner_up = logits.scatter(1, targets[:, None], float("-inf")).max(-1).values
        if bool((target - runner_up >= margin).all()):
            break
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    else:
        raise AssertionError(f"the stop-string model did not learn its continuation in {max_steps} steps")
    model.eval()
    return model
