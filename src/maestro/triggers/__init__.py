"""Triggers that start workflow runs without a caller: cron schedules and their planning."""
