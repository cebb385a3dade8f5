"""The embedded default model: a few-layer Llama and a word-level tokenizer, built from code alone.

Why word-level with one token per number: on 2 CPU cores a character-level model spends most of its
few minutes learning to spell and to carry digits (design.md measured 1-14% final-answer accuracy).
With whole-number tokens a 3-step problem is ~45 tokens, so the same budget buys several times more
optimizer steps and the task becomes one of copying operands and recalling sums, which is what
makes the methods differ. `tokenizers` (the Rust library behind every fast HF tokenizer) builds it.

The base model is pretrained in-process on arithmetic text (`pretrain_*` keys) so that `algorithm=none`
and the label-free methods start from a model that already writes the format, then cached on disk.
"""
from __future__ import annotations

import logging

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from framework.data import arith

log = logging.getLogger(__name__)

# Bump when the tokenizer or architecture code changes what a config builds: cached bases go stale.
TINY_VERSION = 3  # 2: the version-2 task (distractors, smaller numbers); 3: solutions in any valid order
# The pretraining corpus: problems like the default task's (conf/dataset/arith.yaml: same ranges, distractors,
# solution orders and commuted additions), from a separate seed, whole texts (question and solution).
PRETRAIN_SPEC = arith.ArithSpec(min_steps=2, max_steps=4, start_max=20, operand_max=10, value_max=50,
                                multiplier_max=3, operations=("add", "sub"), distractors_max=1,
                                solution_order="any", commute_additions=0.5)

# Checkpoints per pretraining run (every max_steps // this optimizer steps; the default 1500 steps, about 2 min 10 s
# on 2 CPU cores: every 75): an interrupted first run resumes near where it stopped
PRETRAIN_CHECKPOINTS = 20

SPACE = "\u2581"  # the Metaspace marker: a token that follows a space starts with it
SPECIAL_TOKENS = {"pad": "<pad>", "eos": "</s>", "unk": "<unk>"}
SYMBOLS = (".", ",", "?", "!", ":", ";", "=", "+", "-", "*", "/", "(", ")", "$", "%", "####")
# Punctuation is split off words; a leading space marker stays glued to the symbol ("▁=").
SPLIT_PATTERN = SPACE + r"?(?:####|[.,?!:;=+\-*/()$%])|\n"


def build_tokenizer():
    """A PreTrainedTokenizerFast whose vocabulary covers every text the arith generator writes."""
    from transformers import PreTrainedTokenizerFast

    pieces = [*arith.vocabulary_words(), *SYMBOLS, *(str(n) for n in range(arith.NUMBER_TOKEN_MAX + 1))]
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS.values())}
    for piece in pieces:
        for token in (piece, SPACE + piece):
            vocab.setdefault(token, len(vocab))
    vocab.setdefault("\n", len(vocab))

    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"]))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="never", split=True),
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        ]
    )
    backend.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="never", split=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=SPECIAL_TOKENS["pad"],
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        clean_up_tokenization_spaces=False,
        padding_side="left",
        model_max_length=512,
    )


def build_model(tokenizer, *, hidden_size: int, num_layers: int, num_heads: int, intermediate_size: int,
                max_positions: int, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def pretrain(model, tokenizer, texts: list[str], *, output_dir: str, max_steps: int, batch_size: int,
             learning_rate: float, seed: int, trainer_kwargs: dict) -> None:
    """Causal-LM pretraining on whole problem texts with TRL's SFTTrainer (language-modelling mode).

    Checkpoints go to `output_dir` (the stage's checkpoints/) every PRETRAIN_CHECKPOINTS-th of the run, and a
    rerun resumes from the last complete one, as every training stage does (framework/algorithms/training.py)."""
    from datasets import Dataset
    from transformers import TrainingArguments
    from trl import SFTConfig, SFTTrainer

    from framework import console
    from framework.checkpoints import last_complete_checkpoint

    if max_steps <= 0:
        return
    # transformers 5 renamed gradient_checkpointing (the old name warns); the tiny model needs neither
    checkpointing = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                     else "gradient_checkpointing")
    args = SFTConfig(
        output_dir=output_dir,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, max_steps // 20),
        weight_decay=0.0,
        logging_steps=max(1, max_steps // 10),
        save_strategy="steps",
        save_steps=max(1, max_steps // PRETRAIN_CHECKPOINTS),
        save_total_limit=2,
        report_to="none",
        seed=seed,
        data_seed=seed,
        max_length=256,
        dataloader_num_workers=0,
        **{checkpointing: False},
        **trainer_kwargs,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": texts}),
                         processing_class=tokenizer)
    console.stage_progress(trainer, "pretrain base-tiny")
    last = last_complete_checkpoint(output_dir)
    if last:
        log.info("resuming base-tiny pretraining from %s", last)
    with console.tied_weights_not_missing(trainer.model):
        trainer.train(resume_from_checkpoint=last)
