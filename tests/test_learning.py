"""Truth, not mechanics: the real default backbone learns CEBaB from a small subset, and setting
the concepts to their gold values helps. About a minute on 2 CPU cores."""

import numpy as np
import pytest

from lucidlm import ConceptBottleneckLM, load_task


@pytest.mark.slow
def test_joint_bottleneck_learns_cebab_and_gold_concepts_help(cebab_dir):
    task = load_task("cebab", path=cebab_dir)
    train, dev, test = task.train.sample(480, seed=1), task.dev.sample(160, seed=1), task.test.sample(400, seed=1)
    model = ConceptBottleneckLM.from_backbone(task=task.spec, mode="joint", seed=0)
    model.fit(train, eval_data=dev, epochs=3, learning_rate=1e-4, progress=False)
    metrics = model.evaluate(test)

    task_floor = np.bincount(test.labels).max() / len(test)
    concept_floor = np.mean([np.bincount(test.concepts[:, k]).max() / len(test) for k in range(4)])
    assert metrics["task"]["accuracy"] > task_floor + 0.12, metrics["task"]
    assert metrics["concepts"]["accuracy"] > concept_floor + 0.10, metrics["concepts"]
    assert metrics["task_gold_concepts"]["accuracy"] > metrics["task"]["accuracy"], metrics
