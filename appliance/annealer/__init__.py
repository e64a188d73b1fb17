"""The annealer: barclamps, deployments, node-role states, attribute injection and the runner."""
