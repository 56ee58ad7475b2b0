"""The optional vLLM sampling backend (``generation_backend=vllm``): PagedAttention and continuous batching make
sampling many responses on a GPU an order of magnitude faster than ``model.generate``.

Nothing imports this module unless a run asks for the backend, and it imports ``vllm`` only inside its functions:
on a machine without vllm (every CPU host, CI) the transformers path costs nothing and a run that asks for vllm is
refused by :func:`check_available` before any work. Only sampling runs here; training stays on transformers, so
rejection sampling frees vLLM's memory (:meth:`VLLMSampler.close`) before it fine-tunes.

vLLM schedules sequences itself within each call; Arbiter hands it ``generation_batch_size`` sequences at a time
only so that progress is reported and a cancel is heard between calls (raise it to 1024 or more on a GPU).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .base import RunnerError, cuda_available, is_adapter_folder
from .policy import Sample, free_memory, is_gguf


def check_available(config) -> None:
    """Refuse, before any work, a vllm run this machine or this policy cannot do."""
    if importlib.util.find_spec("vllm") is None:
        raise RunnerError(
            "generation_backend=vllm needs the vllm package, which is not installed on this machine. Install it on a "
            "CUDA GPU host (pip install vllm), or use generation_backend=transformers."
        )
    if not cuda_available():
        raise RunnerError(
            "generation_backend=vllm needs a CUDA GPU and this machine has none; use generation_backend=transformers."
        )
    if is_gguf(config.base_model) or is_adapter_folder(config.base_model):
        raise RunnerError(
            "generation_backend=vllm samples from a folder of full safetensors weights, not a GGUF file or an unmerged "
            "adapter; use generation_backend=transformers (or train with merge_adapter on)."
        )


class VLLMSampler:
    """The same interface as ``policy.TransformersSampler``: ``generate(batch_ids, num_samples, config)``."""

    def __init__(self, llm, tokenizer):
        self.llm = llm
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, path, config, tokenizer, precision: str) -> "VLLMSampler":
        from vllm import LLM

        dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32")
        llm = LLM(
            model=str(Path(path)),
            tokenizer=str(Path(path)),
            dtype=dtype,
            seed=config.seed,
            max_model_len=config.max_prompt_length + config.max_new_tokens,
            enable_prefix_caching=True,
        )
        return cls(llm, tokenizer)

    def generate(self, batch: list[list[int]], num_samples: int, config) -> list[list[Sample]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        greedy = config.temperature == 0
        params = SamplingParams(
            n=1 if greedy else num_samples,
            temperature=config.temperature,
            top_p=1.0 if greedy else config.top_p,
            top_k=-1,
            max_tokens=config.max_new_tokens,
            skip_special_tokens=True,
        )
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in batch], params, use_tqdm=False)
        rows = []
        for output in outputs:
            samples = [to_sample(completion) for completion in output.outputs]
            rows.append(
                samples if len(samples) == num_samples else [Sample(**vars(samples[0])) for _ in range(num_samples)]
            )
        return rows

    def close(self) -> None:
        self.llm = None
        try:  # vLLM keeps a process group and its workers until told otherwise
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        except Exception:  # noqa: BLE001 - best effort: older and newer vLLMs name these differently
            pass
        free_memory()


def to_sample(completion) -> Sample:
    """vLLM's finish reasons are ``stop`` (the eos token or a stop string) and ``length``."""
    reason = "eos" if completion.finish_reason == "stop" else "length"
    return Sample(completion.text.strip(), reason, len(completion.token_ids))
