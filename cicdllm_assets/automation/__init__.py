"""Sensors, schedules, jobs and automation conditions."""
