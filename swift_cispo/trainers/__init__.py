from .config import DEFAULT_CISPO_EPSILON_HIGH, GRPOConfig
from .grpo_trainer import CISPOTrainer, GRPOTrainer

__all__ = ["CISPOTrainer", "DEFAULT_CISPO_EPSILON_HIGH", "GRPOConfig", "GRPOTrainer"]
