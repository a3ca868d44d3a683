"""What every other part builds on: user errors, whole-file writes, checkpoint IO, the CLI runtime."""
