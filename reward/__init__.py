"""reward: the RL4Seg learned reward and what surrounds it.

Modules (one concept each):

- :mod:`reward.anatomy` - anatomical validity criteria of a label map;
- :mod:`reward.correctors` - morphological correction and the shape auto-encoder;
- :mod:`reward.builder` - the reward-network training set (pseudo-labels, perturbation negatives);
- :mod:`reward.network` - the reward network, temperature scaling, checkpoints, the env adapter;
- :mod:`reward.training` - training the reward network from scratch on the reward set;
- :mod:`reward.fusion` - the shape auto-encoder's agreement reward and the pixelwise fusion of reward maps;
- :mod:`reward.uncertainty_methods` - the uncertainty baselines (softmax, MC dropout, TTA) and their comparison;
- :mod:`reward.uncertainty` - ``1 - reward`` uncertainty maps and calibration metrics.

The reward network and the uncertainty metrics are re-exported here.
"""
from reward.network import (
    LearnedReward,
    RewardNet,
    fit_temperature,
    load_reward_net,
    save_reward_net,
)
from reward.training import RewardTrainConfig, RewardTrainResult, train_reward_network
from reward.uncertainty import (
    ReliabilityCurve,
    UncertaintyAccumulator,
    adaptive_calibration_error,
    error_map,
    expected_calibration_error,
    foreground_mask,
    maximum_calibration_error,
    mutual_information,
    plot_reliability_diagram,
    reliability_curve,
    reward_dice_correlation,
    uncertainty_map,
)

__all__ = [
    "LearnedReward", "RewardNet", "RewardTrainConfig", "RewardTrainResult", "fit_temperature", "load_reward_net",
    "save_reward_net", "train_reward_network",
    "ReliabilityCurve", "UncertaintyAccumulator", "adaptive_calibration_error", "error_map",
    "expected_calibration_error", "foreground_mask", "maximum_calibration_error", "mutual_information",
    "plot_reliability_diagram", "reliability_curve", "reward_dice_correlation", "uncertainty_map",
]
