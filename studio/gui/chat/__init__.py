"""The Chat screen: panes side by side, the blind comparison, prompt sets, the leaderboard."""
