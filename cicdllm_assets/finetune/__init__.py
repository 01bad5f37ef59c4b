"""Close the loop: LoRA fine-tuning on the exported dataset and base-vs-adapter evaluation.

Everything runs through mlx-lm's own training API (:mod:`mlx_lm.tuner`): its dataset
classes, ``linear_to_lora_layers``, ``train`` with a :class:`~mlx_lm.tuner.TrainingArgs` and
a callback, ``evaluate`` and ``load_adapters``. This package adds what a pipeline needs
around it: content-addressed adapter directories, resumable checkpoints, a history of
evaluations per dataset version, and a training-curve plot. No Dagster imports here.
"""
