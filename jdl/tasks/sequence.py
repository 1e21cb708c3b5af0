"""Sequence tasks: regression (e.g. the adding problem) and next-token language modelling,
which prints and saves sampled text after every evaluation. Sequence classification is the
"classification" task on a `sequence` / `tokens` dataset."""

import functools
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jdl.data import Dataset
from jdl.steps import sequence
from jdl.tasks.base import Task
from jdl.tasks.classification import initial_train_state


def regression(
    config: ml_collections.ConfigDict,
    dataset: Dataset,
    model: nn.Module | None = None,
    *,
    num_outputs: int = 1,
):
    """Mean-squared-error regression of a float `target` with `num_outputs` values."""
    return Task(
        state=initial_train_state(config, dataset, num_outputs, model),
        train_step=sequence.regression_train_step,
        eval_step=sequence.regression_eval_step,
    )


def language_model(
    config: ml_collections.ConfigDict,
    dataset: Dataset,
    model: nn.Module | None = None,
    *,
    sample_tokens: int = 0,
    prompt: str = "\n",
    temperature: float = 0.8,
    top_k: int = 0,
):
    """Next-token prediction over the dataset's vocabulary (`info.num_classes` tokens).

    Sampling reads the prompt and writes the text one character per token.

    After every evaluation, when `sample_tokens` > 0 and the dataset has a `vocabulary`,
    generates that many tokens after `prompt` (key: the seed and the epoch), prints the text
    and writes it to workdir/samples/epoch_<N>.txt.
    """
    state = initial_train_state(config, dataset, dataset.info.num_classes, model)
    after_eval = None
    if sample_tokens > 0:
        vocabulary = getattr(dataset, "vocabulary", None)
        if vocabulary is None:
            raise ValueError(
                f"sample_tokens needs a dataset with a vocabulary; {dataset.info.name!r} has none"
            )
        index = {token: i for i, token in enumerate(vocabulary)}
        unknown = sorted(set(prompt) - set(index))
        if not prompt or unknown:
            raise ValueError(f"The prompt {prompt!r} must be non-empty text of the vocabulary")
        after_eval = functools.partial(
            _write_sample,
            generate=jax.jit(
                functools.partial(
                    sequence.generate,
                    state.model,
                    num_tokens=sample_tokens,
                    temperature=temperature,
                    top_k=top_k,
                )
            ),
            prompt_ids=jnp.array([[index[char] for char in prompt]], jnp.int32),
            prompt=prompt,
            decode=dataset.decode,
            key=jax.random.fold_in(jax.random.key(config.seed), 2),
        )
    return Task(
        state=state,
        train_step=sequence.language_model_train_step,
        eval_step=sequence.language_model_eval_step,
        after_eval=after_eval,
        after_eval_metrics=(),  # the sample text is printed and saved, not a metric
    )


def _write_sample(
    state, epoch: int, workdir: Path | None, *, generate, prompt_ids, prompt, decode, key
) -> dict:
    """Generates text from `prompt`, prints it and saves it (process 0); adds no metric."""
    variables = jax.device_get(state.variables)
    tokens = np.asarray(generate(variables, prompt_ids, jax.random.fold_in(key, epoch)))[0]
    text = prompt + decode(tokens)
    if jax.process_index() == 0:
        if workdir is not None:  # None: a run that writes nothing
            folder = Path(workdir) / "samples"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"epoch_{epoch}.txt").write_text(text)
        print(f"--- sample after epoch {epoch} ---\n{text}\n---")
    return {}
