"""Truth, not mechanics: the real default backbone learns CEBaB's label and concepts from a small
subset. About a minute on 2 CPU cores. (Whether gold concepts help is measured, on full CEBaB, by
bench/cebab_bottleneck.py: with four aspects they do not; with C3M's thirteen concepts they do.)"""

import numpy as np
import pytest

from lucidlm import ConceptBottleneckLM, load_task


@pytest.mark.slow
def test_joint_bottleneck_learns_cebab(cebab_dir):
    task = load_task("cebab", path=cebab_dir)
    train, dev, test = task.train.sample(480, seed=1), task.dev.sample(160, seed=1), task.test.sample(400, seed=1)
    model = ConceptBottleneckLM.from_backbone(task=task.spec, mode="joint", seed=0)
    model.fit(train, eval_data=dev, epochs=3, learning_rate=1e-4, progress=False)
    metrics = model.evaluate(test)

    task_floor = np.bincount(test.labels).max() / len(test)
    concept_floor = np.mean([np.bincount(test.concepts[:, k]).max() / len(test) for k in range(4)])
    assert metrics["task"]["accuracy"] > task_floor + 0.12, metrics["task"]
    assert metrics["concepts"]["accuracy"] > concept_floor + 0.10, metrics["concepts"]
