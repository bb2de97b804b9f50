"""mm1core: an MM1-style multimodal model, its synthetic world, training loop and evaluation.

Knows nothing of Ray, MLflow or Optuna; `ablations/` adapts those. Import from the submodules: `mm1core.config`
and `mm1core.presets` are torch-free (for planning), `mm1core.pipeline.run_trial` trains and evaluates.
"""
