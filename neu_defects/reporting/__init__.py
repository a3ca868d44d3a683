"""What a run or a sweep leaves for people to read: per-run reports of each task, sweep summaries,
research-study tables, and reading finished runs back for notebooks and scripts."""
