"""Results on disk and what is computed from them: metrics, leaderboards, reports."""
