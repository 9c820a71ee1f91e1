"""rl4seg_env: segmentation as a one-step Gymnasium environment (RL4Seg)."""
