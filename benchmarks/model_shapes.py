"""The architectures of the paper presets' models, as their published config.json files give them: what the memory
plan (docs/memory-plan.md) and the GPU smoke check (benchmarks/gpu_smoke.py, random weights) are computed for
where the weights and the hub are out of reach. `write(name, directory)` writes one as a config.json that
`model=hf model.name_or_path=<directory>` reads (the plan then estimates token counts from characters)."""
from __future__ import annotations

from pathlib import Path

SHAPES = {
    # Qwen/Qwen2.5-1.5B (experiment=soc_paper)
    "qwen2.5-1.5b": {"model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                     "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                     "max_position_embeddings": 131072, "tie_word_embeddings": True, "rope_theta": 1000000.0,
                     "rms_norm_eps": 1e-6},
    # Qwen/Qwen2.5-7B (the SOC paper's largest)
    "qwen2.5-7b": {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                   "max_position_embeddings": 131072, "tie_word_embeddings": False, "rope_theta": 1000000.0,
                   "rms_norm_eps": 1e-6},
    # microsoft/Phi-3.5-mini-instruct (experiment=sharpening_paper)
    "phi-3.5-mini": {"model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
                     "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
                     "tie_word_embeddings": False, "rms_norm_eps": 1e-5, "pad_token_id": 32000},
    # deepseek-ai/deepseek-math-7b-base (experiment=self_explore_paper)
    "deepseek-math-7b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
                         "num_hidden_layers": 30, "num_attention_heads": 32, "num_key_value_heads": 32,
                         "vocab_size": 102400, "max_position_embeddings": 4096, "tie_word_embeddings": False,
                         "rope_theta": 10000.0, "rms_norm_eps": 1e-6},
}


def config(name: str):
    """The transformers config of a shape."""
    from transformers import AutoConfig

    values = dict(SHAPES[name])
    return AutoConfig.for_model(values.pop("model_type"), **values)


def write(name: str, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config(name).save_pretrained(directory)
    return directory
