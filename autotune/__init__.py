"""autotune: Optuna studies that tune AdaTP's thresholds per dataset and FLOPs budget, tracked in MLflow."""
