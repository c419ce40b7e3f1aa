"""Training on the feature cache: expert heads, the MoE router, the attention baseline, CV."""
